"""Floods in the console's remote pane against OpenSSH `ssh -J` in tmux, through one relay.

Run: python -m bench.flood [--mb 50] [--rounds 3] [--interrupts 20] [--size 80x24]

Both contenders are real and side by side in one tmux server, at the same size, on the same
agent through the same relay: the console (`adhoc-console` with its remote pane open) and
OpenSSH's `ssh -J` (the anchor). Rounds alternate between them, who goes first alternating
too, after one uncounted warm-up run of each program in each; before each run the machine is
left quiet for three seconds.
- Throughput: `yes | head -c N` and `find /usr /lib /etc` on the host. The host times its
  own command (`date` before and after), so the figure is how fast the terminal lets the
  program run; "on screen" is from Enter to the line after the flood showing in tmux.
- Interrupt: `yes` runs, ctrl+c is sent, and the time until the prompt shows again in tmux
  is taken, with one CPU kept busy by a `yes > /dev/null` burner, as in issue 14.
- CPU: what each terminal side spends per flood, its program and its own tmux server
  (user + system seconds, psutil), which the machine's other load disturbs far less than
  the times do.
- Memory: the console's peak RSS over the whole run (psutil, sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil

from bench.common import (
    ROOT,
    deployment,
    header,
    median,
    openssh_server,
    openssh_version,
    percentile,
    run_async,
    scratch_dir,
    settle,
    table,
    verdict,
)
from bench.launch import LEVERS_ENV
from bench.transfer import VARIANTS, JumpConfig
from tests.support import PASSWORD, SESSION_PASSWORD

PROMPT = "flood$"
POLL = 0.01


class Window:
    """One tmux session holding a terminal program, read back with capture-pane."""

    def __init__(self, socket: Path, name: str, command: str, env: dict[str, str],
                 cols: int, rows: int) -> None:
        self.base = ["tmux", "-f", "/dev/null", "-S", str(socket)]
        self.name = name
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        subprocess.run([*self.base, "new-session", "-d", "-s", name, "-x", str(cols), "-y",
                        str(rows), f"env -u COLUMNS -u LINES {exports} {command}"], check=True,
                       cwd=ROOT)

    def keys(self, *keys: str, literal: bool = False) -> None:
        subprocess.run([*self.base, "send-keys", "-t", self.name, *(["-l"] if literal else []),
                        *keys], check=True)

    def line(self, text: str) -> None:
        self.keys(text, literal=True)
        self.keys("Enter")

    def screen(self) -> list[str]:
        out = subprocess.run([*self.base, "capture-pane", "-p", "-t", self.name],
                             capture_output=True, text=True).stdout
        return [line.rstrip() for line in out.splitlines()]

    def wait_for(self, test, timeout: float = 120) -> float:
        """Poll the screen until `test(lines)`; the seconds it took."""
        start = time.perf_counter()
        while not test(self.screen()):
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"{self.name}: never saw it on screen:\n"
                                   + "\n".join(self.screen()))
            time.sleep(POLL)
        return time.perf_counter() - start

    def at_prompt(self, lines: list[str]) -> bool:
        shown = [line for line in lines if line]
        return bool(shown) and shown[-1] == PROMPT

    def pid(self, what: str = "pane_pid") -> int:
        return int(subprocess.run([*self.base, "display", "-p", "-t", self.name,
                                   f"#{{{what}}}"], capture_output=True, text=True).stdout)

    def cpu(self) -> float:
        """CPU seconds so far of the program and of its tmux server."""
        total = 0.0
        for pid in (self.pid(), self.pid("pid")):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        return total


class Peak:
    """The highest RSS of a process, sampled in the background of the event loop."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0

    async def run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(0.05)


def flood_command(work: Path, program: str, tag: str) -> tuple[str, Path]:
    stamp = work / f"{tag}.time"
    return (f"s=$(date +%s.%N); {program}; e=$(date +%s.%N); echo \"$s $e\" > {stamp};"
            f" echo DONE-{tag}", stamp)


def run_flood(window: Window, work: Path, program: str, tag: str
              ) -> tuple[float, float, float]:
    """(seconds the host's program ran, seconds from Enter to its end on screen, CPU seconds
    of the terminal side)."""
    cpu = window.cpu()
    command, stamp = flood_command(work, program, tag)
    window.keys(command, literal=True)
    window.keys("Enter")
    seen = window.wait_for(lambda lines: f"DONE-{tag}" in lines, timeout=600)
    deadline = time.monotonic() + 30
    while not stamp.exists() or not stamp.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError("the host never wrote its timing")
        time.sleep(POLL)
    begin, end = map(float, stamp.read_text().split())
    window.wait_for(window.at_prompt)
    return end - begin, seen, window.cpu() - cpu


def interrupt(window: Window) -> float:
    """Seconds from ctrl+c on a running `yes` to the prompt on screen."""
    window.line("yes")
    window.wait_for(lambda lines: sum(line == "y" for line in lines) > 5)
    time.sleep(1.0)  # well into the flood
    start = time.perf_counter()
    window.keys("C-c")
    window.wait_for(window.at_prompt, timeout=60)
    return time.perf_counter() - start


async def open_console(window: Window) -> None:
    window.wait_for(lambda lines: any("active" in line for line in lines))
    window.keys("r")
    window.wait_for(lambda lines: any("Session password for" in line for line in lines))
    window.keys(SESSION_PASSWORD, literal=True)
    window.keys("Enter")
    window.wait_for(lambda lines: any("· connected ·" in line for line in lines))


async def main_async(args: argparse.Namespace) -> None:
    header("Terminal floods: the console's pane against ssh -J in tmux", "textual", "bittty",
           "asyncssh")
    print(f"OpenSSH: {openssh_version()}; tmux: "
          f"{subprocess.run(['tmux', '-V'], capture_output=True, text=True).stdout.strip()}")
    cols, rows = map(int, args.size.split("x"))
    levers = VARIANTS[args.levers]
    print(f"levers on the relay, the agent and the console: {args.levers} ({levers.label})")
    work = scratch_dir("adhoc-bench-flood-")
    os.environ["ADHOC_HOST_SHELL"] = "/bin/sh"  # the agent's shells: quick to start, no rc
    with openssh_server() as sshd:
        async with deployment(levers, ssh_key=Path(f"{sshd.key}.pub")) as dep:
            config = work / "console"
            login = subprocess.run(
                [sys.executable, "-m", "tui.cli", "login", dep.relay.base_url, "--login",
                 dep.api.login_name, "--password-stdin"], input=PASSWORD + "\n", text=True,
                capture_output=True, env={**os.environ, "ADHOC_CONSOLE_CONFIG_DIR": str(config)},
                cwd=ROOT)
            if login.returncode:
                raise RuntimeError(login.stderr)
            jump = JumpConfig(work, sshd, dep)
            console = Window(work / "console.sock", "console",
                             f"{sys.executable} -m bench.launch console",
                             {"ADHOC_CONSOLE_CONFIG_DIR": str(config), "TERM": "xterm-256color",
                              LEVERS_ENV: json.dumps(asdict(levers))}, cols, rows)
            ssh_env = {key: jump.env[key] for key in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE",
                                                      "DISPLAY")}
            ssh = Window(work / "ssh.sock", "ssh",
                         f"ssh {' '.join(jump.args())} -tt {jump.target}",
                         {**ssh_env, "TERM": "xterm-256color"}, cols, rows)
            try:
                await open_console(console)
                contenders = {"console pane": console, "ssh -J": ssh}
                for window in contenders.values():
                    window.wait_for(lambda lines: any(line.endswith(("#", "$"))
                                                      for line in lines))
                    window.line(f"PS1='{PROMPT} '")
                    window.wait_for(window.at_prompt)
                peak = Peak(console.pid())
                sampler = asyncio.create_task(peak.run())
                size = int(args.mb * 1e6)
                programs = {f"yes | head -c {size}": f"yes | head -c {size}",
                            "find /usr /lib /etc": "find /usr /lib /etc 2>/dev/null"}
                programs = {label: program for label, program in programs.items()
                            if label.split()[0] in args.floods.split(",")}
                floods: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
                runs = 0
                if not args.interrupts_only:
                    # One uncounted run of each program in each window first: the first run
                    # after start-up (file system caches, the console's first history) was
                    # always the slowest, and the console's came first.
                    for program in programs.values():
                        for name, window in contenders.items():
                            runs += 1
                            await asyncio.to_thread(run_flood, window, work, program,
                                                    f"{runs}-warm-{name.split()[0]}")
                    print("  (one warm-up run of each, not counted)", flush=True)
                for round_ in range(0 if args.interrupts_only else args.rounds):
                    for label, program in programs.items():
                        # Who goes first alternates from round to round.
                        order = list(contenders.items())[:: -1 if round_ % 2 else 1]
                        for name, window in order:
                            runs += 1
                            settle()
                            tag = f"{runs}-{name.split()[0]}"
                            result = await asyncio.to_thread(run_flood, window, work, program,
                                                             tag)
                            floods.setdefault((label, name), []).append(result)
                            out_bytes = size if label.startswith("yes") else None
                            print(f"  round {round_ + 1} {label} {name}: host {result[0]:.2f} s,"
                                  f" on screen {result[1]:.2f} s, CPU {result[2]:.2f} s"
                                  + (f" ({out_bytes / result[0] / 1e6:.2f} MB/s)"
                                     if out_bytes else ""), flush=True)
                burner = await asyncio.create_subprocess_exec("sh", "-c", "exec yes > /dev/null")
                try:
                    stops: dict[str, list[float]] = {name: [] for name in contenders}
                    for _ in range(args.interrupts):
                        for name, window in contenders.items():
                            stops[name].append(await asyncio.to_thread(interrupt, window))
                finally:
                    burner.kill()
                    await burner.wait()
                sampler.cancel()
            finally:
                for window in (console, ssh):
                    subprocess.run([*window.base, "kill-server"], capture_output=True)
    print(f"\n{cols}x{rows}, {args.rounds} rounds alternating; MB = 10^6 bytes; "
          "host = the program's own run time, on screen = Enter to its end shown")
    rows_out = []
    for label in programs if floods else ():
        pane = floods[(label, "console pane")]
        anchor = floods[(label, "ssh -J")]
        pane_host, anchor_host = median(r[0] for r in pane), median(r[0] for r in anchor)
        pane_seen, anchor_seen = median(r[1] for r in pane), median(r[1] for r in anchor)
        pane_cpu, anchor_cpu = median(r[2] for r in pane), median(r[2] for r in anchor)
        rows_out.append((label, f"{pane_host:.2f}", f"{anchor_host:.2f}",
                         f"{anchor_host / pane_host:.2f}x", f"{pane_seen:.2f}",
                         f"{anchor_seen:.2f}", f"{anchor_seen / pane_seen:.2f}x",
                         f"{pane_cpu:.2f}", f"{anchor_cpu:.2f}",
                         verdict(pane_host <= anchor_host * 1.0)))
    table(("flood", "pane host s", "ssh -J host s", "speed vs ssh -J", "pane on screen s",
           "ssh -J on screen s", "on screen vs ssh -J", "pane CPU s", "ssh -J+tmux CPU s",
           "target >= 1x"), rows_out)
    if not any(stops.values()):  # --interrupts 0
        print(f"\nconsole peak RSS over the run: {peak.peak / 2**20:.0f} MiB")
        return
    print(f"\nctrl+c on `yes` to the prompt, one CPU busy with a burner, {args.interrupts} each")
    rows_out = []
    for name, values in stops.items():
        rows_out.append((name, f"{percentile(values, 50):.3f}", f"{percentile(values, 95):.3f}",
                         f"{max(values):.3f}", verdict(percentile(values, 95) <= 0.5)
                         if name == "console pane" else ""))
    table(("terminal", "p50 s", "p95 s", "max s", "target p95 <= 0.5 s"), rows_out)
    for name, values in stops.items():
        print(f"  {name}, sorted: " + " ".join(f"{value:.3f}" for value in sorted(values)))
    print(f"\nconsole peak RSS over the run: {peak.peak / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50, help="MB of `yes` per flood")
    parser.add_argument("--rounds", type=int, default=3, help="flood rounds per contender")
    parser.add_argument("--interrupts", type=int, default=20, help="ctrl+c trials each")
    parser.add_argument("--size", default="80x24", help="the tmux windows' size")
    parser.add_argument("--interrupts-only", action="store_true", help="skip the floods")
    parser.add_argument("--floods", default="yes,find", help="which floods: yes, find or both")
    parser.add_argument("--levers", default="shipped", choices=sorted(VARIANTS),
                        help="bench.transfer's levers, on the relay, the agent and the console")
    run_async(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
