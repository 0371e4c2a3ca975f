/* presence-tracker page script: keeps an open page online and shows the live counts.
 *
 * <script src="/presence/presence.js" data-interval="30" data-heartbeat-limit="1200" defer></script>
 *
 * data-interval         seconds between heartbeats (default 30)
 * data-heartbeat-limit  seconds without user input after which the page stops beating
 *                       (the server's heartbeat_limit, default 1200)
 * data-page             the page key (default location.pathname)
 *
 * Elements marked data-presence="online|members|hidden|guests|bots|sessions|page|peak"
 * are filled from the JSON counts. Heartbeats use fetch (no WebSocket, which would keep
 * the page out of the back/forward cache) and stop while the tab is hidden; leaving uses
 * navigator.sendBeacon on pagehide (no unload listener).
 */
(function () {
  'use strict';
  var me = document.currentScript;
  if (!me || !window.fetch) return;
  var ds = me.dataset;
  function seconds(value, fallback) {
    var n = parseFloat(value);
    return n > 0 ? n * 1000 : fallback * 1000;
  }
  var base = me.src.replace(/\/presence\.js([?#].*)?$/, '');
  var interval = seconds(ds.interval, 30);
  var limit = seconds(ds.heartbeatLimit, 1200);
  var page = ds.page || location.pathname;
  var timer = null;
  var lastInput = Date.now();
  var inputSinceBeat = false;
  var gone = false; // the server answered 410: wait for input, then re-join

  function url(action) {
    return base + '/' + action + '?page=' + encodeURIComponent(page);
  }

  function fill(counts) {
    var els = document.querySelectorAll('[data-presence]');
    for (var i = 0; i < els.length; i++) {
      var key = els[i].getAttribute('data-presence');
      var value = key === 'peak' ? counts.peak && counts.peak.online : counts[key];
      if (typeof value === 'number') els[i].textContent = String(value);
    }
  }

  function send(action) {
    var wantCounts = document.querySelector('[data-presence]') !== null;
    fetch(url(action), {
      method: 'POST',
      keepalive: true,
      credentials: 'same-origin',
      headers: wantCounts ? { 'Accept': 'application/json' } : {}
    }).then(function (res) {
      if (res.status === 410) {
        gone = true;
        stop();
      } else if (res.status === 200) {
        return res.json().then(fill);
      }
    }).catch(function () { /* offline for a moment: the next beat retries */ });
  }

  function beat() {
    if (document.hidden || gone || Date.now() - lastInput >= limit) {
      // Hidden, or forgotten: stop, so the server lets the session go. Input resumes.
      stop();
      return;
    }
    // Input since the last beat makes it an activity report (the visitor is not idle).
    send(inputSinceBeat ? 'active' : 'heartbeat');
    inputSinceBeat = false;
  }

  function start() {
    if (timer === null) timer = setInterval(beat, interval);
  }

  function stop() {
    if (timer !== null) {
      clearInterval(timer);
      timer = null;
    }
  }

  function onInput() {
    lastInput = Date.now();
    if (document.hidden) return;
    if (gone || timer === null) {
      // Re-join (after a 410) or resume (after hiding or the heartbeat limit) at once.
      gone = false;
      inputSinceBeat = false;
      send('active');
      start();
    } else {
      inputSinceBeat = true;
    }
  }

  var opts = { passive: true, capture: true };
  ['pointerdown', 'pointermove', 'keydown', 'scroll', 'wheel', 'touchstart'].forEach(function (type) {
    window.addEventListener(type, onInput, opts);
  });

  document.addEventListener('visibilitychange', function () {
    if (document.hidden) stop();
    else onInput(); // coming back to the tab is attention
  });

  window.addEventListener('pagehide', function () {
    stop();
    if (navigator.sendBeacon) navigator.sendBeacon(url('leave'));
  });

  window.addEventListener('pageshow', function (event) {
    // Restored from the back/forward cache: it said goodbye on pagehide, so re-join.
    if (event.persisted) {
      gone = false;
      lastInput = Date.now();
      send('active');
      start();
    }
  });

  // A first beat shortly after load refreshes the counts and cancels the pending leave
  // sent by the previous page of a navigation or reload.
  setTimeout(function () {
    if (!document.hidden && !gone) send('heartbeat');
  }, 500);
  if (!document.hidden) start();
})();
