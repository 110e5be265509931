# Worker container for Dataflow (features and bulk jobs on GPU workers, `--profile dataflow-gpu`) and for
# multi-worker training pods. Build from the repository root and push where the profile's
# sdk_container_image points:
#
#   docker build -f launch/worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/captionbeam/worker:latest .
#   docker push REGION-docker.pkg.dev/PROJECT/captionbeam/worker:latest
#
# The Beam SDK image must match the Beam version that submits the job (see `pip show apache-beam`).
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

# The CUDA build of TensorFlow (the build machine has no GPU, so say so instead of auto-detecting), and
# Java for METEOR when the image also runs `captionbeam evaluate`.
ENV CAPTIONBEAM_TENSORFLOW="tensorflow[and-cuda]>=2.16" \
    TF_FORCE_GPU_ALLOW_GROWTH=true
RUN apt-get update && apt-get install -y --no-install-recommends default-jre-headless \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/captionbeam
COPY setup.py README.md ./
COPY pipelines ./pipelines
COPY model ./model
COPY launch ./launch
COPY captionbeam ./captionbeam
RUN pip install --no-cache-dir ".[eval]" && python -c "import captionbeam.pipelines.features, captionbeam.model.train, captionbeam.launch.cli"

# Dataflow starts the SDK harness from the base image's entry point (/opt/apache/beam/boot); for a
# training pod, run `captionbeam train ... --strategy multiworker` as the container command instead.
