"use strict";
// chatd's page: one WebSocket to /ws, one text message per line each way (docs/web.md).
// Lines from the server are shown with textContent only, never parsed as HTML.
(() => {
  const log = document.getElementById("log");
  const later = document.getElementById("later");
  const state = document.getElementById("state");
  const form = document.getElementById("send");
  const input = document.getElementById("line");

  const KEEP_LINES = 5000;     // older lines leave the page
  const FIRST_PAUSE = 250;     // ms; reconnect pauses double up to MAX_PAUSE, as chatd client's
  const MAX_PAUSE = 10000;
  const CLAIM_TRIES = 5;       // asks for a nick still held by the lost session

  let socket = null;
  let pause = FIRST_PAUSE;
  let retry = null;
  let joined = false;          // the welcome line came on this connection
  let stay = false;            // no reconnecting: the user left, or the server said not to
  const typed = [];            // what was typed, for Up and Down
  let recall = 0;

  // The nick is what the server says (welcome line, renames), never what was typed, so after a
  // reconnect the page asks for the last one the server granted (like src/client/nick.rs).
  const nick = { current: null, claiming: null, tries: 0, timer: null };

  const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 8;

  function show(text, kind) {
    const stick = atBottom();
    const div = document.createElement("div");
    div.textContent = text;
    div.className = kind || (text.startsWith("* ") ? "notice" : text.startsWith("! ") ? "error" : "");
    log.append(div);
    while (log.childElementCount > KEEP_LINES) log.firstElementChild.remove();
    if (stick) log.scrollTop = log.scrollHeight;
    else later.hidden = false;
  }

  // A note from the page itself, set apart from the server's lines.
  const say = (text) => show("*** " + text, "local");

  function setState(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function connect() {
    clearTimeout(retry);
    retry = null;
    stay = false;
    joined = false;
    setState("connecting", "connecting…");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + "/ws");
    socket = ws;
    ws.onopen = () => setState("open", "connected");
    ws.onmessage = (event) => {
      if (socket === ws && typeof event.data === "string") received(event.data);
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      lost();
    };
  }

  function lost() {
    clearTimeout(nick.timer);
    if (nick.claiming === null) nick.claiming = nick.current;
    nick.current = null;
    nick.tries = 0;
    if (stay) {
      setState("left", "not connected — press Enter to join again");
      return;
    }
    if (joined) say("connection lost; reconnecting");
    const wait = pause * (0.5 + 0.5 * Math.random());
    pause = Math.min(pause * 2, MAX_PAUSE);
    setState("closed", `not connected — next try in ${(wait / 1000).toFixed(1)} s`);
    retry = setTimeout(connect, wait);
  }

  function send(line) {
    socket.send(line);
  }

  function received(line) {
    show(line);
    const welcome = /^\* Welcome to .*\. You are ([A-Za-z0-9_-]{1,32})\. /.exec(line);
    if (welcome) {
      joined = true;
      pause = FIRST_PAUSE;
      nick.current = welcome[1];
      const wanted = nick.claiming;
      nick.claiming = null;
      if (wanted !== null && wanted.toLowerCase() !== welcome[1].toLowerCase()) {
        nick.claiming = wanted;
        nick.tries = 1;
        say("taking back the nick " + wanted);
        send("/nick " + wanted);
      }
      return;
    }
    const renamed = /^\* ([A-Za-z0-9_-]{1,32}) is now known as ([A-Za-z0-9_-]{1,32})$/.exec(line);
    if (renamed) {
      if (nick.current !== null && nick.current.toLowerCase() === renamed[1].toLowerCase()) {
        nick.current = renamed[2];
        if (nick.claiming !== null && nick.claiming.toLowerCase() === renamed[2].toLowerCase()) {
          nick.claiming = null;
        }
      }
      return;
    }
    const taken = /^! nickname '([A-Za-z0-9_-]{1,32})' is taken$/.exec(line);
    if (taken && nick.claiming !== null && taken[1].toLowerCase() === nick.claiming.toLowerCase()) {
      if (nick.tries >= CLAIM_TRIES) {
        say("the nick " + nick.claiming + " stays taken; keeping this one");
        nick.claiming = null;
        return;
      }
      // The lost session may still hold it for a moment: ask again after 1, 2, 4, 8 s.
      const wanted = nick.claiming;
      nick.timer = setTimeout(() => {
        if (socket && socket.readyState === WebSocket.OPEN && nick.claiming === wanted) {
          nick.tries += 1;
          send("/nick " + wanted);
        }
      }, 1000 << Math.min(nick.tries - 1, 4));
      return;
    }
    // Coming straight back would only be turned away or cut off again.
    if (line === "* disconnected: idle" || line === "! you are banned") stay = true;
  }

  // A bare "quit" leaves like /quit (docs/protocol.md).
  const leaves = (line) => /^\/quit(\s|$)/i.test(line) || /^[ \t]*quit[ \t]*$/i.test(line);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const line = input.value;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      if (!socket && retry === null) {
        connect();
      } else if (line.trim() !== "") {
        say("not connected: that line was not sent (it is still in the input)");
      }
      return;
    }
    if (line.trim() === "") return;
    if (typed[typed.length - 1] !== line) typed.push(line);
    recall = typed.length;
    if (leaves(line)) stay = true;
    send(line);
    input.value = "";
    log.scrollTop = log.scrollHeight;
  });

  input.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowUp" && event.key !== "ArrowDown") return;
    if (typed.length === 0) return;
    event.preventDefault();
    recall = Math.max(0, Math.min(typed.length, recall + (event.key === "ArrowUp" ? -1 : 1)));
    input.value = recall < typed.length ? typed[recall] : "";
  });

  log.addEventListener("scroll", () => {
    if (atBottom()) later.hidden = true;
  });
  later.addEventListener("click", () => {
    log.scrollTop = log.scrollHeight;
    later.hidden = true;
    input.focus();
  });

  connect();
})();
