"""A chat page on Chainlit, answered by the sandbox's backend
(OPENAI_API_BASE_URL and OPENAI_API_KEY, which the launcher sets)."""
import os

import chainlit as cl
import httpx

BASE, KEY = os.environ["OPENAI_API_BASE_URL"], os.environ["OPENAI_API_KEY"]
MODEL = os.environ.get("MODEL", "smollm2")


@cl.on_message
async def answer(message: cl.Message):
    history = cl.user_session.get("history") or []
    history.append({"role": "user", "content": message.content})
    async with httpx.AsyncClient(timeout=300) as client:
        reply = await client.post(f"{BASE}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                  json={"model": MODEL, "max_tokens": 128, "messages": history})
    reply.raise_for_status()
    text = reply.json()["choices"][0]["message"]["content"]
    history.append({"role": "assistant", "content": text})
    cl.user_session.set("history", history)
    await cl.Message(content=text).send()
