// The landing page's live figures. /ws/network/ carries a "network.stats" snapshot every few
// seconds (apps/marketplace/network_stats.py); each one replaces the figures' text with the
// server's own wording. Other events on the stream are not this page's. A dropped socket is
// reopened with backoff; the next snapshot brings the page up to date, whatever it missed.
(() => {
  const root = document.getElementById("network-live");
  if (!root) return;
  const state = document.getElementById("live-state");
  const at = document.getElementById("stats-at");
  // Four ticks of the 5 s beat (CELERY_BEAT_SCHEDULE): no snapshot for that long, and the page
  // stops calling itself live even though its socket is open.
  const STALE_MS = 20000;
  let socket = null;
  let retryMs = 1000;
  let lastSnapshot = 0;

  function show(name, text) {
    if (state.dataset.state === name) return; // role=status: say it once, not every tick
    state.dataset.state = name;
    state.querySelector(".live-text").textContent = text;
  }

  function freshness() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    if (Date.now() - lastSnapshot < STALE_MS) show("live", "Live");
    else show("waiting", "Connected, waiting for figures");
  }

  function apply(event) {
    for (const [key, text] of Object.entries(event.text || {})) {
      const figure = root.querySelector(`[data-stat="${key}"]`);
      if (!figure || figure.textContent === text) continue;
      figure.textContent = text;
      figure.classList.remove("changed");
      void figure.offsetWidth; // restart the highlight
      figure.classList.add("changed");
    }
    at.dateTime = event.at;
    at.textContent = `${new Date(event.at).toISOString().slice(11, 19)} UTC`;
    lastSnapshot = Date.now();
    freshness();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${root.dataset.socket}`);
    socket.addEventListener("open", () => { retryMs = 1000; freshness(); });
    socket.addEventListener("message", (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      if (event.type === "network.stats") apply(event);
    });
    socket.addEventListener("close", () => {
      show("offline", "Offline, reconnecting…");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    });
  }

  connect();
  setInterval(freshness, 5000);
})();
