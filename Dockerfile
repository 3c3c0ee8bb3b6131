# Build stage: all dependencies, compile TypeScript, then drop the dev dependencies.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

# Runtime stage: compiled code and production dependencies only, owned by root and read-only for the node user
# that runs them.
FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY public ./public
USER node
EXPOSE 9000
# bash's /dev/tcp asks /health without starting a second Node process every 30 s.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-9000} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '\"success\":true' <&3"]
CMD ["node", "--import", "./dist/instrument.js", "dist/server.js"]
