"""raglign.kv_cache: the cache keyword follows the model's forward signature (transformers
5.17 takes ``past_key_values``, 5.25 ``cache``), and the engine's prefix really reaches the
model through it."""

import torch

from raglign.kv_cache import cache_kwarg


class _Old(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, **kwargs):
        return past_key_values


class _New(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, **kwargs):
        return cache


def test_keyword_follows_the_forward_signature():
    marker = object()
    assert cache_kwarg(_Old(), marker) == {"past_key_values": marker}
    assert cache_kwarg(_New(), marker) == {"cache": marker}
    assert _Old()(**cache_kwarg(_Old(), marker)) is marker


def test_installed_transformers_model_takes_the_prefix_through_it(tiny_llama):
    """A continuation scored over the named cache equals the same tokens in one forward; were
    the keyword swallowed by ``**kwargs`` the continuation would see no prefix and differ."""
    from transformers import DynamicCache

    model = tiny_llama
    ids = torch.tensor([[5, 9, 14, 3, 8, 21]])
    full = model(input_ids=ids).logits[0, 3:]
    cache = DynamicCache()
    model(input_ids=ids[:, :3], **cache_kwarg(model, cache), use_cache=True)
    assert cache.get_seq_length() == 3
    rest = model(input_ids=ids[:, 3:], position_ids=torch.arange(3, 6)[None],
                 **cache_kwarg(model, cache), use_cache=True).logits[0]
    torch.testing.assert_close(rest, full, atol=1e-4, rtol=1e-4)
    alone = model(input_ids=ids[:, 3:], position_ids=torch.arange(3, 6)[None]).logits[0]
    assert not torch.allclose(alone, full, atol=1e-3)
