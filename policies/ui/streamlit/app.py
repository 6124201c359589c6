"""A chat page on Streamlit's chat elements, answered by the sandbox's
backend (OPENAI_API_BASE_URL and OPENAI_API_KEY, which the launcher sets)."""
import os

import httpx
import streamlit as st

BASE, KEY = os.environ["OPENAI_API_BASE_URL"], os.environ["OPENAI_API_KEY"]
MODEL = os.environ.get("MODEL", "smollm2")

st.title("Local chat")
if "messages" not in st.session_state:
    st.session_state.messages = []
for m in st.session_state.messages:
    st.chat_message(m["role"]).write(m["content"])
if prompt := st.chat_input("Say something"):
    st.session_state.messages.append({"role": "user", "content": prompt})
    st.chat_message("user").write(prompt)
    reply = httpx.post(f"{BASE}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                       json={"model": MODEL, "max_tokens": 128, "messages": st.session_state.messages})
    reply.raise_for_status()
    text = reply.json()["choices"][0]["message"]["content"]
    st.session_state.messages.append({"role": "assistant", "content": text})
    st.chat_message("assistant").write(text)
