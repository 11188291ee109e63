// PM2 process file for anthropic-proxy installed (pip) in the venv /opt/anthropic-proxy (see docs/deploy.md):
//   pm2 start deploy/pm2/ecosystem.config.js && pm2 save
// PM2 has no HTTP health check: run `python -m anthropic_proxy.healthcheck` from cron or your monitoring.
module.exports = {
  apps: [
    {
      name: "anthropic-proxy",
      script: "/opt/anthropic-proxy/bin/anthropic-proxy",
      args: ["--set", "confdir=/var/lib/anthropic-proxy/mitmproxy"],
      interpreter: "none", // the launcher is an executable; PM2 must not run it with node
      cwd: "/var/lib/anthropic-proxy",
      env: {
        ANTHROPIC_PROXY_HOME: "/var/lib/anthropic-proxy",
        HOST: "127.0.0.1",
        PORT: "8082",
      },
      autorestart: true,
      min_uptime: "5s",
      max_restarts: 10,
      restart_delay: 2000,
      kill_timeout: 30000, // SIGTERM first; mitmdump closes the records in flight
      merge_logs: true,
      time: true,
    },
  ],
};
