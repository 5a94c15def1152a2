# The AI Studio simulator that the end-to-end tests serve to real instance containers (and the bot-check page).
# Built on the instance image (Python, litestar, pillow are there already); context: the repository root.
#   docker build -f deploy/simulator.Dockerfile -t aistudio-fleet-simulator:latest .
ARG INSTANCE_IMAGE=aistudio-fleet-instance:latest
FROM ${INSTANCE_IMAGE}

USER root
COPY tests/__init__.py /app/tests/__init__.py
COPY tests/simulator/ /app/tests/simulator/
# the bot-check page, served by a sidecar in an instance's network namespace (`python -m tests.botcheck`)
COPY tests/botcheck/ /app/tests/botcheck/
RUN python -m compileall -q /app/tests; chown -R root:root /app; chmod -R a+rX /app

USER app
WORKDIR /app
ENV PYTHONPATH=/app
EXPOSE 9000
HEALTHCHECK NONE
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "tests.simulator", "--host", "0.0.0.0", "--port", "9000"]
