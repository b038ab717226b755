# The sample function with the dbkeeper layer, on the AWS Lambda Python base image (it ships the
# Runtime Interface Emulator, so the image runs locally as it would on Lambda).
#
#   ./build.sh                                            # dist/dbkeeper-layer-{x86_64,arm64}.zip
#   docker build --build-arg ARCH=x86_64 -t dbkeeper-sample .      # or ARCH=arm64
#   docker run --rm -p 9000:8080 -e DB_HOST=... -e DB_PORT=3306 -e DB_USER=... \
#       -e DB_PASSWORD=... -e DB_NAME=... dbkeeper-sample
#   curl -d '{"page": "/"}' localhost:9000/2015-03-31/functions/function/invocations
#   docker stop ...        # SIGTERM -> SHUTDOWN: the extension closes its DB connection
#
# Another handler: docker run ... dbkeeper-sample app.handler_global_connection
# Without dbkeeper (for comparison): docker run -e DBKEEPER_ENABLED=false ... (the wrapper then
# leaves DB_HOST/DB_PORT alone and the function connects directly).
#
# The layer zip holds compiled modules (uvloop) for one CPU architecture, so the image's platform
# follows ARCH: x86_64 -> linux/amd64, arm64 -> linux/arm64. The stage for the other architecture
# is never built (BuildKit builds only the stages the target needs).

ARG ARCH=x86_64

# DL3029: the platform is pinned on purpose: it must match the layer's compiled modules.
# hadolint ignore=DL3029
FROM --platform=linux/amd64 public.ecr.aws/lambda/python:3.12 AS base-x86_64
# hadolint ignore=DL3029
FROM --platform=linux/arm64 public.ecr.aws/lambda/python:3.12 AS base-arm64

# DL3006: base-${ARCH} is one of the stages above (tagged there), not an image.
# hadolint ignore=DL3006
FROM base-${ARCH}
ARG ARCH

# The layer, as Lambda would extract it: zip root = /opt. Python's zipfile, because the base image
# has no unzip; file modes are restored from the zip (extensions/dbkeeper and dbkeeper-wrapper
# must stay executable).
COPY dist/dbkeeper-layer-${ARCH}.zip /tmp/dbkeeper-layer.zip
RUN python3 -c "import os, zipfile; z = zipfile.ZipFile('/tmp/dbkeeper-layer.zip'); [os.chmod(z.extract(i, '/opt'), (i.external_attr >> 16) & 0o7777 or (0o755 if i.is_dir() else 0o644)) for i in z.infolist()]" \
    && rm /tmp/dbkeeper-layer.zip \
    && test -x /opt/extensions/dbkeeper && test -x /opt/dbkeeper-wrapper

# The function: its code and its own dependencies (PyMySQL) in the task root, as in a .zip package.
COPY sample_function/ ${LAMBDA_TASK_ROOT}/
RUN pip install --no-cache-dir -r "${LAMBDA_TASK_ROOT}/requirements.txt" -t "${LAMBDA_TASK_ROOT}"

# The runtime starts as `/opt/dbkeeper-wrapper <runtime command...>`: DB_HOST/DB_PORT point at
# the extension (when it is serving).
ENV AWS_LAMBDA_EXEC_WRAPPER=/opt/dbkeeper-wrapper

CMD ["app.handler_connect_per_invoke"]
