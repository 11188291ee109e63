// PM2 process file for anthropic-proxy installed in /opt/anthropic-proxy (see docs/deploy.md):
//   pm2 start deploy/pm2/ecosystem.config.js && pm2 save
// PM2 has no HTTP health check: run deploy/healthcheck.py from cron or your monitoring.
module.exports = {
  apps: [
    {
      name: "anthropic-proxy",
      script: "/opt/anthropic-proxy/.venv/bin/anthropic-proxy",
      args: ["--set", "confdir=/var/lib/anthropic-proxy/mitmproxy"],
      interpreter: "none", // the launcher is an executable; PM2 must not run it with node
      cwd: "/opt/anthropic-proxy",
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
