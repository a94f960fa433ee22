# The image raglign's cluster launchers run: Ray's own GPU image with raglign installed from
# this checkout (never from a URL). Build it from the repository root:
#   docker build -t raglign:0.1.0 .
# then load it into the cluster (kind: `kind load docker-image raglign:0.1.0`) or push it to the
# cluster's registry and use that name in jobs/kuberay/*.yaml.
FROM rayproject/ray:2.60.0-py311-gpu
COPY --chown=ray:users . /home/ray/raglign
RUN pip install --no-cache-dir "/home/ray/raglign[vllm]"
WORKDIR /home/ray/raglign
