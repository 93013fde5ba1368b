"""A local test site for the browser skill: forms, drag and drop, console errors, failing
requests, an infinite-scroll list, a slow endpoint, a download, dialogs, a hover menu and
a key-chord handler. Served by a threaded http.server on 127.0.0.1, port 0."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator

LOGIN = """<!doctype html><title>Login</title>
<h1>Sign in</h1>
<form method="post" action="/login">
  <label>User <input name="user" autocomplete="off"></label>
  <label>Password <input name="password" type="password"></label>
  <button type="submit">Sign in</button>
</form>"""

APP = """<!doctype html><title>App</title>
<style>#menu .sub{display:none} #menu:hover .sub{display:block}
.item{padding:8px;border:1px solid #888;margin:4px;width:120px}
#bin{min-height:60px;border:2px dashed #444;width:200px}</style>
<h1>Welcome USER</h1>
<form id="order" onsubmit="event.preventDefault();
  document.getElementById('out').textContent = JSON.stringify(Object.fromEntries(new FormData(this)));">
  <label>Name <input name="name"></label>
  <label>Notes <textarea name="notes"></textarea></label>
  <label><input type="checkbox" name="gift"> Gift</label>
  <label>Size <select name="size"><option>S</option><option>M</option><option>L</option></select></label>
  <label>File <input type="file" name="file" onchange="document.getElementById('fname').textContent=this.files[0].name"></label>
  <button type="submit">Order</button>
</form>
<pre id="out"></pre><span id="fname"></span>
<div id="menu"><button>Menu</button><div class="sub"><a href="#sub">Hidden entry</a></div></div>
<div class="item" draggable="true" id="apple"
  ondragstart="event.dataTransfer.setData('text/plain', this.id)">apple</div>
<div id="bin" ondragover="event.preventDefault()"
  ondrop="event.preventDefault(); this.textContent = 'dropped ' + event.dataTransfer.getData('text/plain')">bin</div>
<button onclick="console.error('boom from button'); console.log('log line')">Log errors</button>
<button onclick="fetch('/missing').then(r => console.log('missing', r.status))">Fetch missing</button>
<button onclick="fetch('http://127.0.0.1:REFUSED/x').catch(e => console.warn('refused'))">Fetch refused</button>
<button onclick="setTimeout(() => { throw new Error('uncaught kaboom') }, 0)">Throw</button>
<button onclick="document.getElementById('dlg').textContent = String(confirm('Sure?'))">Confirm</button>
<span id="dlg"></span>
<a href="/download" download>Get report</a>
<button onclick="setTimeout(() => document.getElementById('late').hidden = false, 400)">Later</button>
<p id="late" hidden>Arrived late</p>
<input id="keys" aria-label="Keys" onkeydown="if (event.ctrlKey && event.shiftKey && event.key === 'K')
  document.getElementById('chord').textContent = 'chord!'">
<span id="chord"></span>
<script>console.info('app loaded')</script>"""

SCROLL = """<!doctype html><title>Scroll</title><ul id="list"></ul>
<script>
let n = 0;
function more() { for (let i = 0; i < 30; i++) { const li = document.createElement('li');
  li.textContent = 'row ' + (++n); li.style.height = '40px';
  document.getElementById('list').appendChild(li); } }
more();
window.addEventListener('scroll', () => {
  if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 50) more(); });
</script>"""

ANIMATE = """<!doctype html><title>Animate</title><canvas id="c" width="640" height="360"></canvas>
<script>const c = document.getElementById('c').getContext('2d'); let t = 0;
(function draw() { t++; c.fillStyle = `hsl(${t % 360},80%,50%)`; c.fillRect(0, 0, 640, 360);
c.fillStyle = '#000'; c.fillRect((t * 4) % 600, 150, 40, 40); requestAnimationFrame(draw); })();
</script>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    refused_port = 0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, body: bytes, *, status: int = 200, ctype: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path in ("/", "/login"):
            self._send(LOGIN.encode())
        elif url.path == "/app":
            cookie = self.headers.get("Cookie", "")
            user = cookie.split("user=", 1)[1].split(";")[0] if "user=" in cookie else ""
            if not user:
                self._send(b"", status=302, headers={"Location": "/login"})
                return
            page = APP.replace("USER", user).replace("REFUSED", str(self.refused_port))
            self._send(page.encode())
        elif url.path == "/scroll":
            self._send(SCROLL.encode())
        elif url.path == "/animate":
            self._send(ANIMATE.encode())
        elif url.path == "/slow":
            time.sleep(float(query.get("ms", ["1500"])[0]) / 1000)
            self._send(b"<title>Slow</title><p>finally</p>")
        elif url.path == "/download":
            self._send(b"id,total\n1,42\n", ctype="text/csv",
                       headers={"Content-Disposition": 'attachment; filename="report.csv"'})
        elif url.path == "/big":
            self._send(("<title>Big</title>" + "".join(
                f"<p>paragraph {i} with some words</p>" for i in range(3000))).encode())
        else:
            self._send(b"not found", status=404, ctype="text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        user = form.get("user", [""])[0]
        if self.path == "/login" and user and form.get("password", [""])[0] == "secret":
            self._send(b"", status=303, headers={"Location": "/app",
                                                 "Set-Cookie": f"user={user}; Path=/"})
        else:
            self._send(b"<title>Login failed</title><p>wrong password</p>", status=401)


@contextlib.contextmanager
def serve_site() -> Iterator[str]:
    """The site's base URL, e.g. http://127.0.0.1:41234, while the block runs."""
    # The "refused" port stays bound (never listening) while the site runs: a connection
    # to it is refused, and no other process can take the port and answer instead.
    with socket.socket() as refused:
        refused.bind(("127.0.0.1", 0))
        handler = type("Handler", (_Handler,), {"refused_port": refused.getsockname()[1]})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
