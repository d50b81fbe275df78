"""Build the bundled sample corpus: espeak-ng speech laid out as a tiny Libriheavy.

Run once (its output is committed):   python sample/make_sample.py
In:  the sentences below, spoken by espeak-ng (4 voices), resampled 22.05 -> 16 kHz by sox.
Out: sample/audio/{small,large}.tar, sample/manifests/libriheavy_cuts_{small,dev,test_clean}.jsonl.gz
     and sample/SHA256SUMS. The same espeak-ng and sox versions reproduce the same bytes.

The `small` manifest holds five chapters; `dev` holds the sixth (its audio is also in small.tar,
as real dev cuts point into the training tars). `test_clean` holds one chapter of a fourth voice,
heard in no other subset (a held-out speaker, for evaluation); its audio is in large.tar, a
LibriLight tar no other manifest uses, so small.tar's bytes do not depend on it. Its ASR texts
say what the reader said ("DOCTOR", "TWELVE"), as Libriheavy's do. Planted defects
(see sample/lookalike.py, Defects): missing audio in dev; past-end, empty text, too short and a
malformed line in small; none in test_clean.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root: the generator is not installed

from sample.lookalike import Chapter, Defects, Utterance, write_corpus  # noqa: E402

# speaker id -> espeak-ng voice, words per minute, pitch (0-99)
VOICES = {
    "2041": ("en-us", 165, 45),
    "587": ("en-gb+f3", 160, 60),
    "7302": ("en+m3", 155, 35),
    "5105": ("en-gb-scotland+f2", 160, 70),  # test_clean only
}

# (speaker, book_dir, stem, book title, sentences): two chapters per speaker.
BOOKS = [
    (
        "2041",
        "lighthouse_keeper_1409_librivox_64kb_mp3",
        "lighthousekeeper_01_marsh_64kb",
        "The Lighthouse Keeper",
        [
            "The lighthouse stood at the end of a long, crooked pier.",
            "Every evening, old Martin climbed all 92 steps to the lamp.",
            "\u201cThe sea is restless tonight,\u201d he told the gulls.",
            "Nobody answered him, of course; nobody ever did.",
            "He trimmed the wick and wiped the salt from the glass.",
            "Far out, a single ship was turning toward the harbour.",
        ],
    ),
    (
        "2041",
        "lighthouse_keeper_1409_librivox_64kb_mp3",
        "lighthousekeeper_02_marsh_64kb",
        "The Lighthouse Keeper",
        [
            "In the morning, the fog had swallowed the whole coast.",
            "Martin made his tea and waited for the boy from the village.",
            "\u201cAre you there, Mr. Martin?\u201d a small voice called.",
            "The boy had brought bread, three apples, and a letter.",
            "It was written in his daughter's careful, slanting hand.",
            "He read it twice before he dared to smile.",
        ],
    ),
    (
        "587",
        "The_Winter-Garden__Stories_0923_librivox_64kb_mp3",
        "wintergarden_03_hale_64kb",
        "The Winter Garden and Other Stories",
        [
            "Snow had fallen quietly during the night.",
            "Clara opened the shutters and looked down at the garden.",
            "The roses were gone, but the holly was bright with berries.",
            "\u201cWho left these footprints by the gate?\u201d she wondered aloud.",
            "They led across the lawn and stopped beneath the oak tree.",
            "There, half hidden in the snow, lay a silver key.",
        ],
    ),
    (
        "587",
        "The_Winter-Garden__Stories_0923_librivox_64kb_mp3",
        "wintergarden_04_hale_64kb",
        "The Winter Garden and Other Stories",
        [
            "She carried the key into the kitchen and set it on the table.",
            "Her brother looked at it and laughed, a little too loudly.",
            "\u201cIt belongs to the old summer house,\u201d he said.",
            "The summer house had been locked since 1907.",
            "Nobody remembered why, and nobody had asked.",
            "That afternoon, Clara walked down the path alone.",
        ],
    ),
    (
        "7302",
        "letters_from_a_Northern_Town_1102_librivox",
        "northerntown_01_ashby_64kb",
        "Letters from a Northern Town",
        [
            "My dear Edward, the town is colder than you warned me.",
            "The mills begin their noise at six, and it never stops.",
            "I have taken two rooms above a bookseller's shop.",
            "He is a kind man, though he talks of nothing but the weather.",
            "Do you still walk by the river on Sunday afternoons?",
            "Write soon, and tell me everything you can.",
        ],
    ),
    (
        "7302",
        "letters_from_a_Northern_Town_1102_librivox",
        "northerntown_07_ashby_64kb",
        "Letters from a Northern Town",
        [
            "Your letter arrived on Tuesday, wrapped in brown paper.",
            "I laughed at your description of the new minister.",
            "\u201cA sermon of forty minutes,\u201d you wrote, \u201cand not one idea.\u201d",
            "Here, the winter has finally begun to soften.",
            "The children play in the street until the lamps are lit.",
            "I think, at last, I could be happy in this place.",
        ],
    ),
]
DEV_CHAPTERS = 1  # the last chapter goes to the dev manifest

# The held-out voice: (speaker, book_dir, stem, title, [(sentence, what the reader says)]).
TEST_BOOKS = [
    (
        "5105",
        "country_doctor_2207_librivox_64kb_mp3",
        "countrydoctor_01_reid_64kb",
        "A Country Doctor",
        [
            (
                "Dr. Ellis arrived in the valley on a wet April morning.",
                "DOCTOR ELLIS ARRIVED IN THE VALLEY ON A WET APRIL MORNING",
            ),
            (
                "She had brought one trunk, 12 books and a black umbrella.",
                "SHE HAD BROUGHT ONE TRUNK TWELVE BOOKS AND A BLACK UMBRELLA",
            ),
            (
                "\u201cYou will want the house by the mill,\u201d said Mr. Grant.",
                "YOU WILL WANT THE HOUSE BY THE MILL SAID MISTER GRANT",
            ),
            (
                "The house was damp, but the view across the river was lovely.",
                "THE HOUSE WAS DAMP BUT THE VIEW ACROSS THE RIVER WAS LOVELY",
            ),
            (
                "By evening, her first patient was knocking at the door.",
                "BY EVENING HER FIRST PATIENT WAS KNOCKING AT THE DOOR",
            ),
            ("It was a boy of 9 with a badly cut thumb.", "IT WAS A BOY OF NINE WITH A BADLY CUT THUMB"),
        ],
    ),
]
TEST_AUDIO = "large"  # the LibriLight subset (tar) of the held-out chapters
MANIFESTS = ("small", "dev", "test_clean")
DEFECTS = Defects(missing_audio="dev", past_end="small", empty_text="small", too_short="small", malformed_line="small")


# The tool versions the committed samples' bytes come from (sample/README.md); others change the audio.
TOOLS = {"espeak-ng": " 1.51 ", "sox": "v14.4.2"}


def tools_match() -> bool:
    """Whether espeak-ng and sox on PATH are the versions that made the committed samples."""
    return all(
        shutil.which(tool) and version in subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
        for tool, version in TOOLS.items()
    )


def speak(text: str, voice: str, wpm: int, pitch: int, tmp: Path, rate: int = 16000) -> np.ndarray:
    """espeak-ng at 22.05 kHz -> sox, 3 dB down, resampled to `rate` Hz, float32 (no dither, so repeatable)."""
    wav, raw = tmp / "speech.wav", tmp / "speech.f32"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(wav), text], check=True)
    subprocess.run(
        [
            "sox",
            str(wav),
            "-t",
            "raw",
            "-e",
            "floating-point",
            "-b",
            "32",
            "-c",
            "1",
            str(raw),
            "gain",
            "-3",
            "rate",
            "-h",
            str(rate),
        ],
        check=True,
    )
    return np.fromfile(raw, dtype="<f4")


def build(out_dir: Path) -> dict[str, str]:
    """Synthesize, write the corpus and SHA256SUMS; return {relative path: sha256}."""
    books = [("small", *book, [(s, None) for s in sentences]) for *book, sentences in BOOKS]
    books += [(TEST_AUDIO, *book) for book in TEST_BOOKS]
    chapters = []
    with tempfile.TemporaryDirectory() as tmp:
        for subset, speaker, book_dir, stem, title, sentences in books:
            voice, wpm, pitch = VOICES[speaker]
            utts = [Utterance(s, speak(s, voice, wpm, pitch, Path(tmp)), spoken) for s, spoken in sentences]
            chapters.append(Chapter(subset, speaker, book_dir, stem, utts, book_title=title))
    ids = [ch.recording_id for ch in chapters[: len(BOOKS)]]
    subsets = {
        "small": ids[:-DEV_CHAPTERS],
        "dev": ids[-DEV_CHAPTERS:],
        "test_clean": [ch.recording_id for ch in chapters[len(BOOKS) :]],
    }
    files = write_corpus(chapters, out_dir, defects=DEFECTS, manifest_subsets=subsets)
    paths = [files.tars["small"], files.tars[TEST_AUDIO]] + [files.manifests[m] for m in MANIFESTS]
    sums = {p.relative_to(out_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    (out_dir / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
    return sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: sample/)")
    for path, digest in build(ap.parse_args().out).items():
        print(f"{digest}  {path}")


if __name__ == "__main__":
    main()
