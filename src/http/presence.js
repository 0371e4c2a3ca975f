/* presence-tracker page script: keeps an open page online and shows the live counts.
 *
 * <script src="/presence/presence.js" data-interval="30" data-heartbeat-limit="1200"
 *         data-idle-timeout="300" defer></script>
 *
 * data-interval         seconds between heartbeats while the page is in use (default 30)
 * data-heartbeat-limit  seconds without user input after which the page stops beating
 *                       (the server's heartbeat_limit, default 1200)
 * data-idle-timeout     the server's idle_timeout in seconds, which caps the backoff below
 *                       (every beat's answer says it again); data-backoff="off" keeps the
 *                       interval fixed
 * data-page             the page key (default location.pathname)
 * data-refresh          seconds between reads of the counts while the tab is visible
 *                       (default: none, the counts follow the heartbeats)
 *
 * Elements marked data-presence="online|members|hidden|guests|bots|sessions|page|peak|peak-at"
 * are filled from the JSON counts, elements marked data-presence-page="/some/path" with
 * the number of sessions on that page, and elements marked data-presence-list="members"
 * (members online) or "page" (sessions on this page) with names: "alice, bob and 12 more"
 * (data-presence-more="guest|guests" names the rest, data-presence-empty says nobody).
 * Everything is written as text, never as markup. Heartbeats and reads use fetch (no
 * WebSocket, which would keep the page out of the back/forward cache) and stop while the
 * tab is hidden; leaving uses navigator.sendBeacon on pagehide (no unload listener).
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
  var refresh = seconds(ds.refresh, 0);
  var page = ds.page || location.pathname;
  var timer = null;
  var refreshTimer = null;
  var lastInput = Date.now();
  var inputSinceBeat = false;
  var gone = false; // the server answered 410: wait for input, then re-join
  var asked = 0; // answers older than the last one shown are dropped
  var shown = 0;

  // The pages whose counts the document shows, asked for with every request.
  function watched() {
    var els = document.querySelectorAll('[data-presence-page]');
    var seen = {};
    var query = '';
    for (var i = 0; i < els.length; i++) {
      var p = els[i].getAttribute('data-presence-page');
      if (p && !seen[p]) {
        seen[p] = true;
        query += '&pages=' + encodeURIComponent(p);
      }
    }
    return query;
  }

  function url(action) {
    return base + '/' + action + '?page=' + encodeURIComponent(page) +
      (action === 'leave' ? '' : watched());
  }

  function wantsCounts() {
    return document.querySelector('[data-presence],[data-presence-page],[data-presence-list]') !== null;
  }

  // "alice", "alice and bob", "alice, bob and 12 more", "12 more", or the empty text.
  function names(list, total, el) {
    var more = Math.max(0, total - list.length);
    var words = (el.getAttribute('data-presence-more') || 'more').split('|');
    var parts = list.slice();
    if (more > 0) parts.push(more + ' ' + (more === 1 ? words[0] : words[words.length - 1]));
    if (parts.length === 0) return el.getAttribute('data-presence-empty') || 'None';
    if (parts.length === 1) return parts[0];
    return parts.slice(0, -1).join(', ') + ' and ' + parts[parts.length - 1];
  }

  function utc(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace('T', ' ') + ' UTC';
  }

  function fill(counts, order) {
    if (order < shown) return;
    shown = order;
    var els = document.querySelectorAll('[data-presence]');
    for (var i = 0; i < els.length; i++) {
      var key = els[i].getAttribute('data-presence');
      var value = counts[key];
      if (key === 'peak') value = counts.peak && counts.peak.online;
      if (key === 'peak-at') value = counts.peak && typeof counts.peak.at === 'number' ? utc(counts.peak.at) : null;
      if (typeof value === 'number' || typeof value === 'string') els[i].textContent = String(value);
    }
    var pages = counts.pages || {};
    els = document.querySelectorAll('[data-presence-page]');
    for (i = 0; i < els.length; i++) {
      var n = pages[els[i].getAttribute('data-presence-page')];
      if (typeof n === 'number') els[i].textContent = String(n);
    }
    els = document.querySelectorAll('[data-presence-list]');
    for (i = 0; i < els.length; i++) {
      var which = els[i].getAttribute('data-presence-list');
      var list = which === 'page' ? counts.page_names : counts.names;
      var total = which === 'page' ? counts.page : counts.members;
      if (Array.isArray(list) && typeof total === 'number') {
        // textContent: a name is text, whatever characters it holds.
        els[i].textContent = names(list.map(String), total, els[i]);
      }
    }
  }

  function send(action, retried) {
    var want = wantsCounts();
    var order = ++asked;
    fetch(url(action), {
      method: 'POST',
      keepalive: true,
      credentials: 'same-origin',
      headers: want ? { 'Accept': 'application/json' } : {}
    }).then(function (res) {
      backoff.answered(res);
      if (res.status === 410) {
        if (action === 'active' && !retried) {
          // First visit: the page came without our cookie and this answer brought it;
          // the visitor counts from the next request that returns it.
          send('active', true);
          return;
        }
        gone = true;
        stop();
      } else if (res.status === 200) {
        return res.json().then(function (counts) { fill(counts, order); });
      }
    }).catch(function () {
      // Offline for a moment: the next beat retries, soon.
      backoff.failed();
    });
  }

  function read() {
    if (document.hidden || Date.now() - lastInput >= limit) {
      stopRefresh();
      return;
    }
    var order = ++asked;
    fetch(url('counts'), { credentials: 'same-origin', cache: 'no-store' }).then(function (res) {
      if (res.status === 200) return res.json().then(function (counts) { fill(counts, order); });
    }).catch(function () { /* the next read retries */ });
  }

  function beat() {
    timer = null;
    if (document.hidden || gone || Date.now() - lastInput >= limit) {
      // Hidden, or forgotten: stop, so the server lets the session go. Input resumes.
      return;
    }
    // Input since the last beat makes it an activity report (the visitor is not idle).
    var input = inputSinceBeat;
    send(input ? 'active' : 'heartbeat');
    inputSinceBeat = false;
    arm(backoff.after(input));
  }

  function start() {
    if (timer === null) arm(backoff.restart());
    startRefresh();
  }

  function stop() {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
  }

  function startRefresh() {
    if (refresh > 0 && refreshTimer === null && wantsCounts()) refreshTimer = setInterval(read, refresh);
  }

  function stopRefresh() {
    if (refreshTimer !== null) {
      clearInterval(refreshTimer);
      refreshTimer = null;
    }
  }

  function onInput() {
    lastInput = Date.now();
    if (document.hidden) return;
    startRefresh();
    if (gone || timer === null) {
      // Re-join (after a 410) or resume (after hiding or the heartbeat limit) at once.
      gone = false;
      inputSinceBeat = false;
      send('active');
      start();
    } else {
      inputSinceBeat = true;
      backoff.input();
    }
  }

  /* ---- Backoff: heartbeats follow attention ------------------------------------------
   * While nobody touches the page, each heartbeat waits twice as long as the one before
   * (interval, 2x, 4x, ...), up to half the server's idle_timeout: a session lives
   * idle_timeout after its last beat, so who counts as online does not change, and a beat
   * that fails is retried at `interval`, still in time. Input (or the tab coming back into
   * view, which counts as input) brings the next beat within `interval` and starts over.
   * Without a known idle_timeout (data-idle-timeout, or the Presence-Idle-Timeout header
   * of every beat's answer, which wins) the interval stays fixed, as with
   * data-backoff="off". The heartbeat limit still stops the beats: see beat().
   */
  var due = 0; // when the armed beat fires
  var backoff = (function () {
    var on = ds.backoff !== 'off';
    var idleTimeout = isFinite(ds.idleTimeout) ? seconds(ds.idleTimeout, 0) : 0;
    var delay = interval;
    function cap() {
      return on && idleTimeout > 0 ? Math.max(interval, idleTimeout / 2) : interval;
    }
    // Starts over: the armed beat comes within `interval` from now, and the next after it.
    function reset() {
      delay = interval;
      if (timer !== null && due - Date.now() > interval) {
        clearTimeout(timer);
        arm(interval);
      }
    }
    return {
      // The delay before the first beat.
      restart: function () {
        delay = interval;
        return delay;
      },
      // The delay after a beat: `interval` after input, else twice the last, capped.
      after: function (input) {
        delay = input ? interval : Math.min(delay * 2, cap());
        return delay;
      },
      // User input while beating.
      input: reset,
      // An answer: learn the server's idle_timeout; a refusal other than 410 (a 429, a
      // 5xx while the server restarts) is a failed beat.
      answered: function (res) {
        var t = parseFloat(res.headers.get('Presence-Idle-Timeout'));
        if (t > 0 && isFinite(t)) idleTimeout = t * 1000;
        if (!res.ok && res.status !== 410) reset();
      },
      // A beat that did not arrive: the next one comes within `interval`.
      failed: reset
    };
  })();

  function arm(delay) {
    due = Date.now() + delay;
    timer = setTimeout(beat, delay);
  }
  /* ---- end of the backoff ------------------------------------------------------------ */

  var opts = { passive: true, capture: true };
  ['pointerdown', 'pointermove', 'keydown', 'scroll', 'wheel', 'touchstart'].forEach(function (type) {
    window.addEventListener(type, onInput, opts);
  });

  document.addEventListener('visibilitychange', function () {
    if (document.hidden) {
      stop();
      stopRefresh();
    } else {
      onInput(); // coming back to the tab is attention
    }
  });

  window.addEventListener('pagehide', function () {
    stop();
    stopRefresh();
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

  // The first report, shortly after load, is activity: it counts a first-time visitor
  // (whose page came without our cookie), refreshes the counts, and cancels the pending
  // leave sent by the previous page of a navigation or reload. Not at once: the previous
  // page's goodbye is sent as this page starts, and must arrive first.
  setTimeout(function () {
    if (!document.hidden && !gone) send('active');
  }, 500);
  if (!document.hidden) start();
})();
