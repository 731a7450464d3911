"""A throwaway mosquitto on the loopback interface, for tests, benchmarks and trying the bridge locally.

It listens on 127.0.0.1 only, on a free port, with its configuration in a
temporary folder, and can be stopped and started again on the same port to
play a broker restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
LOOPBACK = "127.0.0.1"


def find_mosquitto() -> str | None:
    """The mosquitto binary, or None when it is not installed."""
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class BrokerStartError(RuntimeError):
    """mosquitto did not start listening; the message carries its log."""


class LoopbackBroker:
    """A mosquitto process on 127.0.0.1; ``with LoopbackBroker(dir) as broker: broker.url``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        binary: str | None = None,
        password_file: Path | None = None,
        tls_cert: tuple[Path, Path] | None = None,
        acl_file: Path | None = None,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise BrokerStartError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = found
        self.workdir = workdir
        self.port = port or free_loopback_port()
        self.password_file = password_file
        self.tls_cert = tls_cert
        self.acl_file = acl_file
        """mosquitto's per-user topic rules (``acl_file``), as docs/mqtt.md shows for the bridge and devices."""
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls_cert else 'mqtt'}://{LOOPBACK}:{self.port}"

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {LOOPBACK}",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 10000",
        ]
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        if self.tls_cert:
            certfile, keyfile = self.tls_cert
            lines += [f"certfile {certfile}", f"keyfile {keyfile}"]
        if os.geteuid() == 0:
            lines.append("user root")  # stay root: the temporary folder is not readable by 'mosquitto'
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerStartError(f"mosquitto did not start on port {self.port}: {self.log_tail()}")

    def stop(self, crash: bool = False) -> None:
        """Stop mosquitto; ``crash`` kills it at once, so it sends no last wills and says no goodbyes."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if crash:
            process.kill()
            process.wait(timeout=5)
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self, down_s: float = 0.0, crash: bool = False) -> None:
        """Stop (or crash), stay down ``down_s`` seconds, and start again on the same port."""
        self.stop(crash)
        time.sleep(down_s)
        self.start()

    def log_tail(self, n_chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> LoopbackBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
