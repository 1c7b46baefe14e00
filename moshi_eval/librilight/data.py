"""Finding the sequences to evaluate: LibriLight trees, plain audio files and pre-encoded codes.

A LibriLight tree is `<root>/<speaker>/<book>/<chapter>.flac`, usually with a `<chapter>.json` next to each chapter
(LibriLight's metadata: `snr`, `book_meta.genre`, `book_meta.meta_genre`, ...). Each book gives one sequence made of its
first `max_chapters` chapters in sorted order, joined end to end. A chapter without its `.json` gets no metadata and is
still scored, unless a filter needs the metadata. If one of those chapters cannot be used (not readable as audio,
unreadable metadata) the whole book is skipped with the reason, so that a sequence is always made of consecutive
chapters. `books` (`SPEAKER/BOOK` ids) restricts a tree to those books; a book that is not there is an error listing the
closest ones. Anything skipped is listed; with `strict` the first skip is an error instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..scoring.data import Chapter, SequenceSource, Skip, SkipCollector, read_audio_header
from ..scoring.errors import DataError

AUDIO_SUFFIXES = frozenset({".flac", ".wav", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au"})
CODES_SUFFIX = ".safetensors"
LIST_SUFFIXES = frozenset({".txt", ".lst"})


@dataclasses.dataclass
class Discovery:
    sequences: list[SequenceSource]
    skipped: list[Skip]


def read_chapter(path: Path, with_metadata: bool) -> Chapter:
    """Header information of one audio file (and its `.json` metadata when asked); DataError when unusable."""
    chapter = read_audio_header(path)
    if not with_metadata:
        return chapter
    return dataclasses.replace(chapter, metadata=read_chapter_metadata(path))


def read_chapter_metadata(audio_path: Path) -> dict[str, Any] | None:
    """The chapter's LibriLight metadata, None when it has no `.json`; DataError when the file is unreadable."""
    json_path = audio_path.with_suffix(".json")
    if not json_path.is_file():
        return None
    try:
        metadata = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{json_path}: metadata is not valid JSON ({error})") from error
    if not isinstance(metadata, dict):
        raise DataError(f"{json_path}: metadata must be a JSON object")
    return metadata


def chapter_genres(metadata: dict[str, Any] | None) -> set[str]:
    """LibriVox genres and LibriLight meta-genre of a chapter, lowercase, without LibriVox's leading '*'."""
    if not metadata:
        return set()
    book = metadata.get("book_meta") or {}
    genres = book.get("genre") or []
    if isinstance(genres, str):
        genres = [genres]
    names = {str(genre).lstrip("*").strip().lower() for genre in genres}
    if book.get("meta_genre"):
        names.add(str(book["meta_genre"]).strip().lower())
    return names


def filter_reason(source: SequenceSource, min_snr: float | None, min_duration: float | None,
                  exclude_genres: Iterable[str]) -> str | None:
    """Why a sequence fails the filters, or None when it passes."""
    if min_duration is not None and source.duration < min_duration:
        return f"shorter than min_duration ({source.duration:.1f} s < {min_duration} s)"
    if min_snr is not None:
        for chapter in source.chapters:
            if chapter.metadata is None:
                return f"{chapter.path.name} has no LibriLight metadata (.json), which min_snr needs"
            snr = chapter.metadata.get("snr")
            if snr is None:
                return f"{chapter.path.name} has no 'snr' in its metadata (min_snr is set)"
            if float(snr) < min_snr:
                return f"{chapter.path.name} has SNR {float(snr):.2f} < min_snr {min_snr}"
    excluded = {genre.lstrip("*").strip().lower() for genre in exclude_genres}
    if excluded:
        for chapter in source.chapters:
            if chapter.metadata is None:
                return f"{chapter.path.name} has no LibriLight metadata (.json), which exclude_genres needs"
            hit = chapter_genres(chapter.metadata) & excluded
            if hit:
                return f"{chapter.path.name} has excluded genre(s) {', '.join(sorted(hit))}"
    return None


def is_librilight_tree(root: Path) -> bool:
    """True when audio files sit two directory levels below `root` (`<speaker>/<book>/<chapter>`)."""
    for speaker in sorted(p for p in root.iterdir() if p.is_dir()):
        for book in sorted(p for p in speaker.iterdir() if p.is_dir()):
            if any(p.suffix.lower() in AUDIO_SUFFIXES for p in book.iterdir()):
                return True
    return False


def book_ids(root: Path) -> list[str]:
    """Every `<speaker>/<book>` directory of a tree, sorted."""
    return sorted(f"{speaker.name}/{book.name}" for speaker in root.iterdir() if speaker.is_dir()
                  for book in speaker.iterdir() if book.is_dir())


def missing_books_message(root: Path, missing: list[str]) -> str:
    """Which requested books are not in `root`, each with the closest books that are."""
    available = book_ids(root)
    described = []
    for book in missing:
        speaker = book.split("/")[0]
        close = difflib.get_close_matches(book, available, n=3, cutoff=0.5)
        close += [other for other in available if other.startswith(f"{speaker}/") and other not in close][:3]
        described.append(f"{book} (close matches: {', '.join(close)})" if close else f"{book} (no close match)")
    return (f"book(s) not found in {root}: {'; '.join(described)}; the tree holds {len(available)} book(s) as "
            "<speaker>/<book>/<chapter>")


def discover_books(root: Path, books: list[str], max_chapters: int, skips: SkipCollector) -> list[SequenceSource]:
    """The requested `SPEAKER/BOOK` books of a tree only (the rest of the tree is not read); DataError for a missing
    book."""
    missing = [book for book in books if not (root / book).is_dir()]
    if missing:
        raise DataError(missing_books_message(root, missing))
    found = (discover_book(root, root / book, max_chapters, skips) for book in dict.fromkeys(books))
    return [source for source in found if source is not None]


def discover_librilight(root: Path, max_chapters: int, skips: SkipCollector) -> list[SequenceSource]:
    """One sequence per `<speaker>/<book>` directory: its first `max_chapters` chapters, sorted by name."""
    sequences = []
    speakers = sorted(p for p in root.iterdir() if p.is_dir())
    for stray in sorted(p for p in root.iterdir() if p.is_file()):
        skips.skip(stray, "ignored: file at the top of a LibriLight tree (expected <speaker>/<book>/<chapter>)")
    for speaker in speakers:
        books = sorted(p for p in speaker.iterdir() if p.is_dir())
        if not books:
            skips.skip(speaker, "empty speaker directory (no book directories)")
        for book in books:
            source = discover_book(root, book, max_chapters, skips)
            if source is not None:
                sequences.append(source)
    return sequences


def discover_book(root: Path, book: Path, max_chapters: int, skips: SkipCollector) -> SequenceSource | None:
    entries = sorted(book.iterdir())
    audio = [p for p in entries if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
    for other in entries:
        if other.is_dir() or (other.suffix.lower() not in AUDIO_SUFFIXES and other.suffix.lower() != ".json"):
            skips.skip(other, "ignored: not an audio file")
    if not audio:
        skips.skip(book, "empty book directory (no audio files)")
        return None
    chapters = []
    for path in audio[:max_chapters]:
        try:
            chapters.append(read_chapter(path, with_metadata=True))
        except DataError as error:
            skips.skip(book, f"book skipped: {error}")
            return None
    return SequenceSource(sequence_id=book.relative_to(root).as_posix(), chapters=tuple(chapters))


def discover_audio_files(paths: list[Path], base: Path | None, skips: SkipCollector) -> list[SequenceSource]:
    """Each audio file is its own sequence; its id is its path relative to `base` (or its name)."""
    sequences = []
    for path in paths:
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            skips.skip(path, "ignored: not an audio file")
            continue
        try:
            chapter = read_chapter(path, with_metadata=False)
        except DataError as error:
            skips.skip(path, str(error))
            continue
        sequence_id = path.relative_to(base).as_posix() if base is not None else path.name
        sequences.append(SequenceSource(sequence_id=sequence_id, chapters=(chapter,)))
    return sequences


def expand_file_list(entries: list[str]) -> list[Path]:
    """Paths given on the command line; a `.txt`/`.lst` entry is read as a list of paths, one per line."""
    paths: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.suffix.lower() in LIST_SUFFIXES:
            if not path.is_file():
                raise DataError(f"{path}: list file not found")
            lines = [line.strip() for line in path.read_text().splitlines()]
            paths.extend((path.parent / line) if not Path(line).is_absolute() else Path(line)
                         for line in lines if line and not line.startswith("#"))
        else:
            paths.append(path)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataError(f"file(s) not found: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return paths


def discover_codes(entries: list[str]) -> list[SequenceSource]:
    """Pre-encoded sequences: `*.safetensors` files (or directories of them), one sequence per file."""
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(path.rglob(f"*{CODES_SUFFIX}"))
            if not found:
                raise DataError(f"{path}: no {CODES_SUFFIX} files in this directory")
            files.extend(found)
        elif path.is_file():
            if path.suffix != CODES_SUFFIX:
                raise DataError(f"{path}: codes files must be {CODES_SUFFIX} files holding a 'codes' tensor [K, T]")
            files.append(path)
        else:
            raise DataError(f"{path}: codes file or directory not found")
    seen: dict[str, Path] = {}
    sequences = []
    for path in files:
        sequence_id = path.stem
        if sequence_id in seen:
            sequence_id = path.as_posix()
        seen[sequence_id] = path
        sequences.append(SequenceSource(sequence_id=sequence_id, codes_path=path))
    return sequences


def select_sequences(sequences: list[SequenceSource], num_sequences: int | None, seed: int,
                     max_files: int | None = None) -> list[SequenceSource]:
    """All sequences sorted by id (the first `max_files` of them when set), or a seeded random subset of
    `num_sequences` of those (also sorted by id)."""
    ordered = sorted(sequences, key=lambda source: source.sequence_id)[:max_files]
    if num_sequences is None or num_sequences >= len(ordered):
        return ordered
    chosen = random.Random(seed).sample(range(len(ordered)), num_sequences)
    return [ordered[i] for i in sorted(chosen)]


def discover_sequences(
    *,
    audio_dir: str | None = None,
    audio_files: list[str] | None = None,
    codes: list[str] | None = None,
    layout: str = "auto",
    max_chapters: int = 3,
    num_sequences: int | None = None,
    min_snr: float | None = None,
    min_duration: float | None = None,
    exclude_genres: Iterable[str] = (),
    seed: int = 0,
    strict: bool = False,
    books: list[str] | None = None,
    max_files: int | None = None,
) -> Discovery:
    """Everything the inputs describe, filtered and selected; DataError when nothing usable is found."""
    given = [name for name, value in (("audio_dir", audio_dir), ("audio_files", audio_files), ("codes", codes))
             if value]
    if len(given) != 1:
        raise DataError(f"give exactly one of audio_dir, audio_files or codes (got {', '.join(given) or 'none'})")
    if books and not audio_dir:
        raise DataError(f"books ({', '.join(books)}) select books of a LibriLight tree given as audio_dir, not "
                        f"{given[0]}")
    skips = SkipCollector(strict)
    if codes:
        sequences = discover_codes(codes)
        described = ", ".join(codes)
    elif audio_files:
        sequences = discover_audio_files(expand_file_list(audio_files), None, skips)
        described = ", ".join(audio_files)
    else:
        root = Path(audio_dir)  # type: ignore[arg-type]
        if not root.is_dir():
            raise DataError(f"{root}: audio directory not found")
        use_tree = layout == "librilight" or (layout == "auto" and is_librilight_tree(root))
        if books and not use_tree:
            raise DataError(f"books ({', '.join(books)}) select books of a LibriLight tree "
                            f"<speaker>/<book>/<chapter>, but {root} is read as plain audio files (layout {layout})")
        if books:
            sequences = discover_books(root, books, max_chapters, skips)
        elif use_tree:
            sequences = discover_librilight(root, max_chapters, skips)
        else:
            files = sorted(p for p in root.rglob("*") if p.is_file())
            sequences = discover_audio_files(files, root, skips)
        described = str(root)
    kept = []
    for source in sequences:
        reason = filter_reason(source, min_snr, min_duration, exclude_genres) if source.chapters else None
        if reason is None:
            kept.append(source)
        else:
            skips.skipped.append(Skip(source.sequence_id, f"filtered out: {reason}"))
    if not kept:
        details = "; ".join(f"{s.path}: {s.reason}" for s in skips.skipped[:5])
        raise DataError(f"no usable sequences found in {described}" + (f" ({details})" if details else ""))
    return Discovery(sequences=select_sequences(kept, num_sequences, seed, max_files), skipped=skips.skipped)
