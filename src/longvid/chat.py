"""The interactive `longvid chat` loop: streamed answers, a few slash commands, clean exits."""

from __future__ import annotations

import json
import sys

from .errors import LongvidError
from .streaming import TokenPrinter

HELP = """commands:
  /reset     forget the conversation (the video stays encoded)
  /info      what the session holds: frames, visual tokens, KV cache, turns
  /timings   show or hide decode / encode / prefill / generate timings
  /help      this text
  Ctrl-D     quit"""


def _timing_line(t: dict) -> str:
    return (
        f"[decode {t.get('decode', 0):.2f} s, encode {t.get('encode', 0):.2f} s, "
        f"prefill {t.get('prefill', 0):.3f} s, generate {t.get('generate', 0):.2f} s, "
        f"{t.get('tokens_per_s', 0):.1f} tok/s]"
    )


def _read_line(stdin) -> str:
    """One line of input; bytes that are not text (binary on stdin) become U+FFFD instead of ending the REPL."""
    if stdin is not None:
        line = stdin.readline()
        if line == "":
            raise EOFError
        return line
    if hasattr(sys.stdin, "reconfigure") and sys.stdin.errors != "replace":
        sys.stdin.reconfigure(errors="replace")  # not "surrogateescape": no tokenizer takes lone surrogates
    return input(">>> ")


def run_chat(session, max_new_tokens=None, gen=None, show_timings: bool = False, stdin=None, stdout=None) -> None:
    out = stdout or sys.stdout
    info = session.info()
    enc = info["encode_timings"]
    print(
        f"video: {info['frames']} frames -> {info['visual_tokens']} visual tokens"
        f"{' (feature cache hit)' if info['feature_cache_hit'] else ''}; decode {enc.get('decode', 0):.2f} s, "
        f"encode {enc.get('encode', 0):.2f} s. Ask away; /help for commands, Ctrl-D to quit.",
        file=out,
        flush=True,
    )
    while True:
        try:
            line = _read_line(stdin)
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        except UnicodeDecodeError:
            print("(that line is not text; ask again)", file=out)
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd = line.split()[0].lower()
            if cmd in ("/exit", "/quit"):
                return
            if cmd == "/reset":
                session.reset()
                print("(conversation cleared)", file=out)
            elif cmd == "/info":
                print(json.dumps(session.info(), indent=2), file=out)
            elif cmd == "/timings":
                show_timings = not show_timings
                print(f"(timings {'on' if show_timings else 'off'})", file=out)
            else:
                print(HELP, file=out)
            continue
        printer = TokenPrinter(session.model.tokenizer, out)
        try:
            answer = session.ask(line, max_new_tokens=max_new_tokens, gen=gen, on_token=printer)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=out)
            continue
        except LongvidError as e:  # e.g. the conversation outgrew the context: say so, keep the REPL
            print(f"\nerror: {e}", file=out, flush=True)
            continue
        print(file=out, flush=True)
        if show_timings:
            print(_timing_line(answer.timings), file=out, flush=True)
