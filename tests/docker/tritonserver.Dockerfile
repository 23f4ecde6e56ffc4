# Test stand-in for nvcr.io/nvidia/tritonserver:24.10-py3 (no registry is reachable here): the
# same tritonserver 2.51.0 from the nvidia-pytriton wheel that `make up` runs, laid out like the
# official image (tritonserver on PATH, backends under /opt/tritonserver/backends, a non-root
# `triton-server` user), with the project's Python-based `onnxruntime` and `openvino` backends
# standing in for the native ones. The compose file's own command runs in it unchanged.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpython3.11 \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir onnxruntime==1.32.0 openvino==2026.4.1 "numpy<2" \
    && pip install --no-cache-dir --no-deps nvidia-pytriton==0.7.0
RUN set -e; \
    root=$(python -c "import importlib.util as u; print(u.find_spec('pytriton').submodule_search_locations[0])")/tritonserver; \
    mkdir -p /opt/tritonserver/bin /opt/tritonserver/backends/python; \
    ln -s "$root/bin/tritonserver" /opt/tritonserver/bin/tritonserver; \
    cp "$root/backends/python/libtriton_python.so" "$root/backends/python/triton_python_backend_utils.py" \
       /opt/tritonserver/backends/python/; \
    ln -s "$root/python_backend_stubs/3.11/triton_python_backend_stub" /opt/tritonserver/backends/python/; \
    useradd --uid 1000 --create-home triton-server
COPY onnxruntime /opt/tritonserver/backends/onnxruntime
COPY openvino /opt/tritonserver/backends/openvino
ENV PATH=/opt/tritonserver/bin:${PATH}
CMD ["tritonserver", "--help"]
