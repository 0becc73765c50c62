# groupsnap worker image: one per hypervisor host, talking to the host's libvirtd through its socket.
# Node 24: its AsyncLocalStorage does not run on async hooks, so a workflow activation past the SDK's
# isolateExecutionTimeout fails that workflow task instead of aborting the process (docs/adr/0014). package.json: >=22.
FROM node:24-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends libvirt-dev pkg-config python3 make g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY libvirt ./libvirt
RUN npm ci
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libvirt0 qemu-utils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app /app
ENV GROUPSNAP_STATE_DIR=/var/lib/groupsnap
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["worker"]
