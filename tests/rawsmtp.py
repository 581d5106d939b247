"""
A scripted SMTP server on a raw socket, for replies no real server library
would send: a NUL in a reply, a reply code that is not a number.
"""

import socket
import threading
import time


class RawSMTP:
    """
    Answers every command with a fixed reply; ``rcpt_reply`` and
    ``data_reply`` (bytes, without CRLF) replace the usual ``250 ok``.
    ``rcpt_delay`` seconds pass before each RCPT reply (a slow server).
    ``deliveries`` lists (recipients, data) for each message received.
    """

    def __init__(self, *, rcpt_reply=b"250 ok", data_reply=b"250 ok", rcpt_delay=0):
        self.rcpt_reply = rcpt_reply
        self.rcpt_delay = rcpt_delay
        self.data_reply = data_reply
        self.deliveries = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self.sock.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self):
        self.sock.close()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 raw ESMTP\r\n")
            recipients = []
            for line in lines:
                command = line.strip().upper()
                if command.startswith(b"EHLO"):
                    reply = b"250-raw\r\n250-8BITMIME\r\n250 SMTPUTF8"
                elif command.startswith(b"MAIL"):
                    recipients = []
                    reply = b"250 ok"
                elif command.startswith(b"RCPT"):
                    time.sleep(self.rcpt_delay)
                    reply = self.rcpt_reply
                    if reply.startswith(b"2"):
                        recipients.append(line)
                elif command == b"DATA":
                    if not recipients:
                        conn.sendall(b"554 no valid recipients\r\n")
                        continue
                    conn.sendall(b"354 go\r\n")
                    data = []
                    for data_line in lines:
                        if data_line == b".\r\n":
                            break
                        data.append(data_line)
                    self.deliveries.append((recipients, b"".join(data)))
                    reply = self.data_reply
                elif command == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    reply = b"250 ok"
                conn.sendall(reply + b"\r\n")
