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
 * data-stream           "off" keeps to polling (default: the counts are pushed over
 *                       GET /presence/stream while the tab is visible)
 *
 * Elements marked data-presence="online|members|hidden|guests|bots|sessions|page|peak|peak-at"
 * are filled from the JSON counts, elements marked data-presence-page="/some/path" with
 * the number of sessions on that page, and elements marked data-presence-list="members"
 * (members online) or "page" (sessions on this page) with names: "alice, bob and 12 more"
 * (data-presence-more="guest|guests" names the rest, data-presence-empty says nobody).
 * Everything is written as text, never as markup. Heartbeats and reads use fetch (no
 * WebSocket, which would keep the page out of the back/forward cache) and stop while the
 * tab is hidden; leaving uses navigator.sendBeacon on pagehide (no unload listener).
 *
 * While the tab is visible the counts come pushed over one EventSource (the stream also
 * holds the session, so nothing is polled); see "The stream" below. Polling is the
 * fallback where the stream cannot work.
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
  var stream = null; // the open (or opening) stream, see "The stream"

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
    if (streaming()) {
      inputSinceBeat = true; // reported with the stream's next heartbeat
      return;
    }
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
    openStream();
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
      closeStream(true); // its hold goes; the visitor stays online as a hidden tab does
    } else {
      onInput(); // coming back to the tab is attention
    }
  });

  window.addEventListener('pagehide', function () {
    stop();
    stopRefresh();
    closeStream(false); // closed here, so the back/forward cache can keep the page
    // The leave names the last stream, so that its hold goes too if it is still open.
    if (navigator.sendBeacon) navigator.sendBeacon(url('leave') + (lastStream ? '&stream=' + lastStream : ''));
  });

  window.addEventListener('pageshow', function (event) {
    // Restored from the back/forward cache: it said goodbye on pagehide, so re-join.
    if (event.persisted) {
      gone = false;
      lastInput = Date.now();
      send('active');
      openStream();
      if (!streaming()) start();
    }
  });

  /* ---- The stream -------------------------------------------------------------------
   * GET /presence/stream pushes the counts while the tab is visible, and holds the
   * session while it is open: no polling, no heartbeat but one every half idle_timeout
   * (the server's first event says how often), so that a half-open connection cannot keep
   * a ghost online. On hide the page releases its hold (the visitor goes on as an ordinary
   * session, as a hidden tab does) and closes it; on pagehide the leave names it. A stream
   * lost without either starts the server's hold_grace: a heartbeat at once keeps the
   * visitor. Where EventSource is missing, where the stream closes before it opened (a 429
   * or 503 is invisible to EventSource) or does not open in time, the page polls as above,
   * and tries the stream again later, backing off, never for good.
   */
  var useStream = !!window.EventSource && ds.stream !== 'off';
  var streamFailures = 0;
  var streamRetry = null; // the timer of the next try
  var streamBeat = null; // the timer of the heartbeats while streaming
  var lastStream = ''; // the name of the last stream opened, for the leave

  function streaming() {
    return stream !== null && stream.open;
  }

  function openStream() {
    if (!useStream || stream !== null || streamRetry !== null || document.hidden || gone ||
      Date.now() - lastInput >= limit) return;
    var name = 's' + Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
    var source = new EventSource(base + '/stream?page=' + encodeURIComponent(page) + watched() +
      '&stream=' + name);
    var s = { source: source, name: name, open: false, beat: 0, timeout: null };
    stream = s;
    lastStream = name;
    s.timeout = setTimeout(function () {
      if (stream === s && !s.open) lostStream(); // a proxy holding it back: poll instead
    }, 5000);
    source.addEventListener('stream', function (e) {
      try { s.beat = JSON.parse(e.data).heartbeat; } catch (err) { /* keep the default */ }
    });
    source.addEventListener('counts', function (e) {
      if (stream !== s) return;
      if (!s.open) {
        s.open = true;
        clearTimeout(s.timeout);
        streamFailures = 0;
        gone = false; // the stream's hold counts the visitor
        stop(); // pushed from now on: nothing to poll
        stopRefresh();
        startStreamBeat(s.beat);
      }
      var counts;
      try { counts = JSON.parse(e.data); } catch (err) { return; }
      fill(counts, ++asked);
    });
    source.onerror = function () {
      if (stream === s) lostStream();
    };
  }

  // Ends the stream; with `release`, its hold goes first (the visitor stays online).
  function closeStream(release) {
    var s = stream;
    if (s === null) return;
    stream = null;
    clearTimeout(s.timeout);
    stopStreamBeat();
    if (release && navigator.sendBeacon) navigator.sendBeacon(base + '/release?stream=' + s.name);
    s.source.close();
  }

  function lostStream() {
    var wasOpen = streaming();
    closeStream(false);
    streamFailures++;
    var delay = Math.min(60000, 1000 * Math.pow(2, Math.min(streamFailures - 1, 6)));
    streamRetry = setTimeout(function () {
      streamRetry = null;
      openStream();
    }, delay * (0.75 + Math.random() / 2));
    if (document.hidden || Date.now() - lastInput >= limit) return;
    // Poll meanwhile; a lost stream's grace is kept by a heartbeat at once.
    if (wasOpen) send('heartbeat');
    start();
    startRefresh();
  }

  function startStreamBeat(every) {
    stopStreamBeat();
    streamBeat = setInterval(function () {
      if (Date.now() - lastInput >= limit) {
        // Forgotten: let the session go as a polling page does. Input resumes.
        closeStream(true);
        return;
      }
      send(inputSinceBeat ? 'active' : 'heartbeat');
      inputSinceBeat = false;
    }, every > 0 ? every : interval);
  }

  function stopStreamBeat() {
    if (streamBeat !== null) {
      clearInterval(streamBeat);
      streamBeat = null;
    }
  }

  // The first report, shortly after load, is activity: it counts a first-time visitor
  // (whose page came without our cookie), refreshes the counts, and cancels the pending
  // leave sent by the previous page of a navigation or reload. Not at once: the previous
  // page's goodbye is sent as this page starts, and must arrive first.
  setTimeout(function () {
    if (!document.hidden && !gone) send('active');
  }, 500);
  if (!document.hidden) {
    openStream();
    if (stream === null) start(); // no stream here: poll
  }
})();
