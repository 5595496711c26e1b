"""Strict command lines for every verb: a verb's own flags, then (for Beam jobs) Beam pipeline
options; anything else is an error. Beam is imported only when a command line may carry its options.

Every job verb calls `parse_job_args(parser, argv)` instead of `parser.parse_known_args(argv)`, so
that `smartbrush build ... --resolutoin 256` stops at once with

    smartbrush build: error: unknown flag --resolutoin; did you mean --resolution?

instead of Beam logging "Discarding unparseable args" and the job building at the default 512.
"""

from __future__ import annotations

import argparse
import difflib
import functools


class _ParseError(Exception):
    pass


@functools.lru_cache(maxsize=1)
def beam_parser() -> argparse.ArgumentParser:
    """A parser of every Beam pipeline option, built the way PipelineOptions.get_all_options builds
    its own: each loaded PipelineOptions subclass adds its flags (last definition of a class wins)."""
    from apache_beam.options import pipeline_options as beam_options

    class _RaisingBeamParser(beam_options._BeamArgumentParser):  # pylint: disable=protected-access
        """Beam's own option parser, raising instead of printing its usage and exiting."""

        def error(self, message):
            raise _ParseError(message)

    parser = _RaisingBeamParser(allow_abbrev=False, add_help=False)
    classes: dict[str, type] = {}
    for cls in beam_options.PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """The long flags a parser knows (`--name`)."""
    return sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})  # pylint: disable=protected-access


def beam_option_names() -> list[str]:
    return option_names(beam_parser())


def suggestions(flag: str, candidates: list[str], n: int = 2) -> list[str]:
    """Close matches of `flag` among `candidates`; a dash/underscore variant first."""
    norm = flag.replace("_", "-")
    same = [c for c in candidates if c.replace("_", "-") == norm and c != flag]
    close = difflib.get_close_matches(flag, candidates, n=n + len(same), cutoff=0.75)
    return (same + [c for c in close if c not in same])[:n]


def unknown_message(flag: str, candidates: list[str]) -> str:
    close = suggestions(flag, candidates)
    if close:
        return f"unknown flag {flag}; did you mean {' or '.join(close)}?"
    return f"unknown flag {flag} (neither a flag of this command, see --help, nor a Beam pipeline option)"


def parse_job_args(parser: argparse.ArgumentParser, argv: list[str] | None,
                   beam: bool = True) -> tuple[argparse.Namespace, list[str]]:
    """(job args, Beam args) of a command line. A leftover argument that is neither one of the
    parser's flags nor (when `beam`) a Beam pipeline option is an error: `parser.error`, exit 2,
    with the closest flags as a suggestion. Beam flags pass through unchanged, in their order
    (`--runner X`, `--runner=X`, booleans, repeated `--experiments`). Flags are never abbreviated:
    a prefix of a job flag could otherwise swallow a Beam option."""
    parser.allow_abbrev = False
    args, rest = parser.parse_known_args(argv)
    if not rest:
        return args, []
    if beam:
        try:
            _, unknown = beam_parser().parse_known_args(rest)
        except _ParseError as e:
            parser.error(f"Beam pipeline option: {e}")
    else:
        unknown = rest
    if unknown:
        candidates = option_names(parser) + (beam_option_names() if beam else [])
        flags = [u.split("=", 1)[0] for u in unknown if u.startswith("-")]
        if flags:
            parser.error("; ".join(unknown_message(f, candidates) for f in dict.fromkeys(flags)))
        parser.error(f"unexpected argument {unknown[0]!r}")
    return args, rest
