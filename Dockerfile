# vargface on NVIDIA's NGC MXNet container: MXNet 1.9.1 built for CUDA 12.4 (Hopper GPUs included, which the
# mxnet-cu112 wheels are not), Python 3.10. The image's MXNet and NumPy stay as NVIDIA built them: vargface's other
# needs (requirements-ngc.txt) install under a constraint pinning both, and vargface itself with --no-deps.
#   docker build -t vargface .
#   docker run --gpus all --rm -v "$PWD/work:/work" vargface verify --model /work/model,1 --target /work/lfw.bin --ctx gpu:0
FROM nvcr.io/nvidia/mxnet:24.06-py3

WORKDIR /opt/vargface
COPY requirements-ngc.txt ./
RUN pip list --format=freeze | grep -iE '^(mxnet|numpy)==' > /tmp/image-pins.txt \
 && pip install --no-cache-dir -c /tmp/image-pins.txt -r requirements-ngc.txt
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && python -c "import mxnet, numpy; assert mxnet.__version__.startswith('1.9'), mxnet.__version__" \
 && vargface --help > /dev/null

WORKDIR /work
ENTRYPOINT ["vargface"]
