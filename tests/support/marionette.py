"""A Firefox window driven through Marionette, for the tests only: the
launcher never opens a remote protocol (launcher/browser.py), whose TCP port
any local process could drive the window through. The test adds it to the
locked profile to try the hostile page's ways in it, as Chromium's tests do
through the DevTools pipe; `evaluate` and `navigate` as browser.Window has them."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from launcher.errors import SandboxError


class Marionette:
    def __init__(self, command: list[str], profile: Path, limit: float = 90, awaits: bool = True,
                 env: dict | None = None):
        # With `awaits` False, what a click runs is not awaited (a plain
        # profile's WebRTC gathering never ends against a STUN server that
        # never answers): the test looks for what it sent where it arrives.
        self.awaits = awaits
        # Port 0: Firefox picks a free one and writes it in the profile.
        with open(profile / "user.js", "a") as f:
            f.write('user_pref("marionette.port", 0);\n')
        (profile / "MarionetteActivePort").unlink(missing_ok=True)
        # Its own process group: closing ends every process of it, Firefox's
        # under a tracer too (which, told to end, leaves its tracee running).
        self.process = subprocess.Popen([*command[:-1], "--marionette", command[-1]], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                        env=env)
        deadline = time.monotonic() + limit
        port_file = profile / "MarionetteActivePort"
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("Firefox's Marionette did not start")
            time.sleep(0.2)
        self.socket = socket.create_connection(("127.0.0.1", int(port_file.read_text())), timeout=120)
        self.buffer, self.next_id = b"", 0
        self._read()  # the server's hello
        self.call("WebDriver:NewSession", capabilities={"alwaysMatch": {"pageLoadStrategy": "none"}})
        # WebRTC's gathering, with a STUN server that never answers, ends
        # after some 40 s in Firefox: longer than scripts may run by default.
        self.call("WebDriver:SetTimeouts", script=110_000)

    def _read(self):
        while b":" not in self.buffer:
            self.buffer += self.socket.recv(65536)
        length, _, rest = self.buffer.partition(b":")
        while len(rest) < int(length):
            rest += self.socket.recv(65536)
        self.buffer = rest[int(length):]
        return json.loads(rest[:int(length)])

    def call(self, command: str, **params):
        self.next_id += 1
        data = json.dumps([0, self.next_id, command, params]).encode()
        self.socket.sendall(str(len(data)).encode() + b":" + data)
        while True:
            kind, number, error, result = self._read()
            if number == self.next_id:
                if error:
                    raise SandboxError(f"{command}: {error.get('error')}: {error.get('message')}")
                return result

    def evaluate(self, expression: str, gesture: bool = False):
        """The value of `expression` in the page, awaited; with `gesture`,
        run from a click on an element of the page (a user's activation)."""
        if not gesture:
            return self.call("WebDriver:ExecuteScript", script=f"return ({expression});", args=[])["value"]
        self.call("WebDriver:ExecuteScript", args=[], script=f"""
            const b = document.createElement("button"); b.id = "__driven"; b.textContent = "go";
            b.onclick = () => {{ window.__driven = new Promise(go => go({expression})).catch(e => "refused: " + e); }};
            document.body.prepend(b);""")
        element = self.call("WebDriver:FindElement", using="css selector", value="#__driven")["value"]
        try:
            self.call("WebDriver:ElementClick", id=next(iter(element.values())))
            if not self.awaits:
                return None
            return self.call("WebDriver:ExecuteScript", script="return window.__driven;", args=[])["value"]
        except SandboxError as e:
            if "Reached error page" in str(e) or "no such window" in str(e) or "discarded" in str(e):
                return None  # the way navigated the page away (to a refused address)
            raise

    def navigate(self, url: str) -> None:
        self.call("WebDriver:Navigate", url=url)

    def close(self) -> None:
        for signal_number in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, signal_number)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                continue
