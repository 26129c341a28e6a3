"use strict";
// window.site is also what the browser test drives:
// site.ready (a Promise: the event feed is open), site.post(text) -> Promise of the note,
// site.waitForNote(text) -> Promise of the note once the feed delivered it.
const list = document.getElementById("notes");
const statusLine = document.getElementById("status");
const seen = [];
const waiters = [];

function render(note) {
  const item = document.createElement("li");
  item.textContent = note.text;
  item.dataset.id = note.id;
  list.appendChild(item);
}

function deliver(note) {
  seen.push(note);
  render(note);
  for (const waiter of waiters.splice(0)) {
    if (waiter.text === note.text) waiter.resolve(note); else waiters.push(waiter);
  }
}

const feed = new EventSource("/events");
const ready = new Promise((resolve) => {
  feed.onopen = () => { statusLine.textContent = "live"; resolve(true); };
});
feed.addEventListener("note", (e) => deliver({ id: Number(e.lastEventId), text: e.data }));
feed.onerror = () => { statusLine.textContent = "reconnecting…"; };

async function post(text) {
  const response = await fetch("/api/notes", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ text }),
  });
  if (!response.ok) throw new Error(`${response.status}: ${(await response.json()).error}`);
  return response.json();
}

function waitForNote(text) {
  const found = seen.find((n) => n.text === text);
  if (found) return Promise.resolve(found);
  return new Promise((resolve) => waiters.push({ text, resolve }));
}

fetch("/api/notes").then((r) => r.json()).then((notes) => notes.forEach(render));

document.getElementById("note").onsubmit = (e) => {
  e.preventDefault();
  const input = e.target.text;
  if (input.value.trim()) post(input.value).catch((err) => { statusLine.textContent = err.message; });
  input.value = "";
};

window.site = { ready, post, waitForNote, seen };
