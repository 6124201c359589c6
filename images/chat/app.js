const log = document.getElementById("log");
const conversation = [];

function show(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

async function start() {
  const history = await (await fetch("/api/history")).json();
  for (const m of history.messages) { conversation.push(m); show(m.role, m.content); }
  const models = await (await fetch("/api/models")).json();
  const select = document.getElementById("model");
  for (const m of models.data || []) { select.add(new Option(m.id, m.id)); }
}

document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  conversation.push({role: "user", content: text});
  show("user", text);
  const pending = show("assistant", "…");
  const button = document.getElementById("send");
  button.disabled = true;
  try {
    const response = await fetch("/api/chat", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: document.getElementById("model").value, messages: conversation.slice(-20),
                            stream: true})
    });
    if (!response.ok) throw new Error((await response.json()).error || response.status);
    // Server-sent events: each `data:` line is a piece of the answer, shown as it comes.
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", text = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!line.startsWith("data: ")) continue;
        const event = JSON.parse(line.slice(6));
        if (event.error) throw new Error(event.error);
        if (event.delta) { text += event.delta; pending.textContent = text; log.scrollTop = log.scrollHeight; }
      }
    }
    if (!text) pending.textContent = "(empty answer)";
    conversation.push({role: "assistant", content: text});
  } catch (error) {
    pending.className = "msg error";
    pending.textContent = "error: " + error.message;
  } finally {
    button.disabled = false;
  }
});

// Enter sends; Shift+Enter starts a new line.
document.getElementById("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    document.getElementById("form").requestSubmit();
  }
});

start().catch((error) => show("error", "could not reach the backend: " + error.message));
