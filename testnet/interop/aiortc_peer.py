#!/usr/bin/env python3
"""Plays one side of kadrtc's copy-paste signaling with aiortc, against the kadrtc binary.

    aiortc_peer.py answer KADRTC_BIN   # aiortc answers `kadrtc offer`
    aiortc_peer.py offer KADRTC_BIN    # `kadrtc answer` answers aiortc's offer

The description lines ({"type": ..., "sdp": ...}) go through kadrtc's stdin and stdout, as a
person would paste them. Once the data channel is open, each side sends one text message to
the other. Exits 0 only if both messages arrived and kadrtc exited 0 at the end of its stdin,
all within DEADLINE seconds.

Traffic stays on 127.0.0.1: aiortc gathers host candidates on 127.0.0.1 only (aioice skips
loopback by default, so its address lookup is replaced), uses no STUN server (aiortc's
default is a public one), and kadrtc runs with --bind 127.0.0.1. Both descriptions are
checked to hold loopback candidates only before anything connects.
"""

import asyncio
import json
import re
import sys

import aioice.ice

DEADLINE = 60.0
TO_KADRTC = "hello from aiortc"
FROM_KADRTC = "hello from kadrtc, ünïcode too"


def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice.ice.get_host_addresses, restricted to 127.0.0.1."""
    return ["127.0.0.1"] if use_ipv4 else []


if not callable(getattr(aioice.ice, "get_host_addresses", None)):
    sys.exit("aioice.ice.get_host_addresses is gone: update the patch in aiortc_peer.py")
aioice.ice.get_host_addresses = loopback_only

# Imported after the patch, although aioice looks the function up at each gathering anyway.
from aiortc import (  # noqa: E402
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)


def say(text: str) -> None:
    print(f"aiortc: {text}", flush=True)


def check_loopback_only(who: str, sdp: str) -> None:
    """Refuses a description with a candidate outside 127.0.0.0/8."""
    addresses = re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+", sdp, re.MULTILINE)
    if not addresses:
        raise RuntimeError(f"{who}'s description has no candidate:\n{sdp}")
    outside = [a for a in addresses if not a.startswith("127.")]
    if outside:
        raise RuntimeError(f"{who}'s description has candidates off loopback: {outside}")


class Kadrtc:
    """The kadrtc process: description line and --json events on stdout, lines on stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, binary: str, command: str) -> "Kadrtc":
        proc = await asyncio.create_subprocess_exec(
            binary,
            command,
            "--bind",
            "127.0.0.1",
            "--json",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        return cls(proc)

    async def next_json(self) -> dict:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"kadrtc's stdout ended (exit {await self.proc.wait()})")
        return json.loads(line)

    async def wait_event(self, what: str, pred) -> dict:
        while True:
            event = await self.next_json()
            if event.get("event") == "error":
                raise RuntimeError(f"kadrtc reported an error: {event}")
            if pred(event):
                say(f"kadrtc printed {what}: {json.dumps(event, ensure_ascii=False)}")
                return event

    async def send_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def finish(self) -> None:
        """Closes kadrtc's stdin and requires a clean exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = await self.proc.wait()
        if code != 0:
            raise RuntimeError(f"kadrtc exited {code} at the end of its stdin")
        say("kadrtc exited 0 at the end of its stdin")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def description(pc: RTCPeerConnection) -> str:
    local = pc.localDescription
    return json.dumps({"type": local.type, "sdp": local.sdp})


def watch(channel: RTCDataChannel, messages: asyncio.Queue) -> None:
    channel.on("message", messages.put_nowait)


async def exchange(kadrtc: Kadrtc, channel: RTCDataChannel, messages: asyncio.Queue) -> None:
    """One text message each way over the open channel."""
    await kadrtc.wait_event("channel_open", lambda e: e.get("event") == "channel_open")
    channel.send(TO_KADRTC)
    await kadrtc.wait_event(
        "aiortc's message",
        lambda e: e.get("event") == "message" and e.get("text") == TO_KADRTC,
    )
    await kadrtc.send_line(FROM_KADRTC)
    while True:
        message = await messages.get()
        if message == FROM_KADRTC:
            say(f"received kadrtc's message as a string: {message!r}")
            break
        say(f"ignored message {message!r}")
    await kadrtc.finish()


async def answer(kadrtc: Kadrtc, pc: RTCPeerConnection) -> None:
    """aiortc answers `kadrtc offer`."""
    messages: asyncio.Queue = asyncio.Queue()
    channels: asyncio.Queue = asyncio.Queue()

    @pc.on("datachannel")
    def on_datachannel(channel: RTCDataChannel) -> None:
        say(f"kadrtc opened channel {channel.label!r}")
        watch(channel, messages)
        channels.put_nowait(channel)

    offer = await kadrtc.next_json()
    if offer.get("type") != "offer":
        raise RuntimeError(f"kadrtc's first line is not an offer: {offer}")
    check_loopback_only("kadrtc", offer["sdp"])
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    check_loopback_only("aiortc", pc.localDescription.sdp)
    await kadrtc.send_line(description(pc))
    channel = await channels.get()
    await exchange(kadrtc, channel, messages)


async def offer(kadrtc: Kadrtc, pc: RTCPeerConnection) -> None:
    """`kadrtc answer` answers aiortc's offer."""
    messages: asyncio.Queue = asyncio.Queue()
    opened = asyncio.Event()
    channel = pc.createDataChannel("chat")
    channel.on("open", opened.set)
    watch(channel, messages)
    # aiortc gathers in setLocalDescription: the description then holds every candidate.
    await pc.setLocalDescription(await pc.createOffer())
    check_loopback_only("aiortc", pc.localDescription.sdp)
    await kadrtc.send_line(description(pc))
    answer_line = await kadrtc.next_json()
    if answer_line.get("type") != "answer":
        raise RuntimeError(f"kadrtc's first line is not an answer: {answer_line}")
    check_loopback_only("kadrtc", answer_line["sdp"])
    await pc.setRemoteDescription(
        RTCSessionDescription(sdp=answer_line["sdp"], type="answer")
    )
    await opened.wait()
    say("aiortc's channel is open")
    await exchange(kadrtc, channel, messages)


async def main(role: str, binary: str) -> None:
    # kadrtc plays the other role.
    kadrtc = await Kadrtc.start(binary, "offer" if role == "answer" else "answer")
    # No iceServers would mean aiortc's default public STUN server.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        play = answer if role == "answer" else offer
        await asyncio.wait_for(play(kadrtc, pc), DEADLINE)
    finally:
        await pc.close()
        await kadrtc.kill()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("offer", "answer"):
        sys.exit(f"usage: {sys.argv[0]} offer|answer KADRTC_BIN")
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
    except (Exception, asyncio.TimeoutError) as error:  # noqa: BLE001 - reported, exit 1
        print(f"aiortc: FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    say("both messages arrived")
