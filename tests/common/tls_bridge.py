"""A TLS client fleet for chatd's tests: each connection accepted on a local plain port gets a
TLS connection of its own to chatd, and bytes are pumped both ways, so tests drive TLS clients
with their plain-line harness while the TLS sessions themselves are Python's `ssl` (OpenSSL).

Usage: tls_bridge.py CAFILE HOST PORT. Prints the local port on the first line of stdout, then
one line per event: `handshake N`, `closed N clean` (close_notify read), `closed N eof` (TCP
closed without close_notify), `closed N error: ...`. One thread, non-blocking sockets.
"""
import selectors
import socket
import ssl
import sys

ca, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
listener.setblocking(False)
print(listener.getsockname()[1], flush=True)

sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ, None)
handshakes = 0


def say(line):
    print(line, flush=True)


class Pair:
    def __init__(self, n, local, tls):
        self.n, self.local, self.tls = n, local, tls
        self.to_tls, self.to_local = bytearray(), bytearray()
        self.done = False
        self.local_eof = False

    def interest(self):
        sel.modify(self.local, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.to_local else 0), self)
        sel.modify(self.tls, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.to_tls else 0), self)

    def close(self, how):
        if self.done:
            return
        self.done = True
        say(f"closed {self.n} {how}")
        for s in (self.local, self.tls):
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
        try:
            self.local.sendall(bytes(self.to_local))
        except OSError:
            pass
        for s in (self.local, self.tls):
            s.close()

    def pump(self):
        try:
            while True:
                try:
                    data = self.tls.recv(65536)
                except ssl.SSLWantReadError:
                    break
                if not data:
                    return self.close("clean")
                self.to_local += data
        except ssl.SSLEOFError:
            return self.close("eof")
        except (OSError, ssl.SSLError) as e:
            return self.close(f"error: {e}")
        try:
            while not self.local_eof:
                data = self.local.recv(65536)
                if not data:
                    self.local_eof = True
                    self.tls.close()
                    return self.close("local")
                self.to_tls += data
        except BlockingIOError:
            pass
        except OSError as e:
            return self.close(f"error: {e}")
        try:
            while self.to_tls:
                n = self.tls.send(self.to_tls)
                del self.to_tls[:n]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
        except OSError as e:
            return self.close(f"error: {e}")
        try:
            while self.to_local:
                n = self.local.send(self.to_local)
                del self.to_local[:n]
        except BlockingIOError:
            pass
        except OSError as e:
            return self.close(f"error: {e}")
        self.interest()


def accept():
    global handshakes
    while True:
        try:
            local, _ = listener.accept()
        except BlockingIOError:
            return
        raw = socket.create_connection((host, port), timeout=20)
        try:
            tls = ctx.wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False)
        except (OSError, ssl.SSLError) as e:
            say(f"handshake failed: {e}")
            local.close()
            raw.close()
            continue
        handshakes += 1
        n = handshakes
        say(f"handshake {n}")
        local.setblocking(False)
        tls.setblocking(False)
        pair = Pair(n, local, tls)
        sel.register(local, selectors.EVENT_READ, pair)
        sel.register(tls, selectors.EVENT_READ, pair)
        pair.pump()


while True:
    for key, _ in sel.select():
        if key.data is None:
            accept()
        else:
            key.data.pump()
