"""A chat page on Gradio's ChatInterface, answered by the sandbox's backend
(OPENAI_API_BASE_URL and OPENAI_API_KEY, which the launcher sets)."""
import os

import gradio as gr
import httpx

BASE, KEY = os.environ["OPENAI_API_BASE_URL"], os.environ["OPENAI_API_KEY"]
MODEL = os.environ.get("MODEL", "smollm2")


def answer(message, history):
    # History comes as {"role", "content"} messages (or, in older Gradio, as pairs).
    messages = [m if isinstance(m, dict) else {"role": r, "content": c}
                for m in history for r, c in ([m] if isinstance(m, dict) else zip(("user", "assistant"), m))]
    messages = [{"role": m["role"], "content": m["content"]} for m in messages if isinstance(m.get("content"), str)]
    reply = httpx.post(f"{BASE}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                       json={"model": MODEL, "max_tokens": 128,
                             "messages": messages + [{"role": "user", "content": message}]})
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


if __name__ == "__main__":
    gr.ChatInterface(answer, title="Local chat").launch(server_name="0.0.0.0", server_port=8080)
