"""Vocabulary (fixed, see DESIGN.md) and genetic codes for codon tokens.

Genetic codes come from Biopython's NCBI tables rather than a copy of our own.
"""

from __future__ import annotations

import itertools
import json
from functools import cache
from pathlib import Path

import numpy as np
from Bio.Data import CodonTable

PAD, BOS, EOS, SEP = 0, 1, 2, 3
SPECIALS = ["<PAD>", "<BOS_CDS>", "<EOS_CDS>", "<SEP>"]
CODONS = ["".join(c) for c in itertools.product("ACGT", repeat=3)]  # AAA, AAC, ..., TTT
CODON_OFFSET = len(SPECIALS)
ITOS = SPECIALS + CODONS
STOI = {tok: i for i, tok in enumerate(ITOS)}
VOCAB_SIZE = len(ITOS)  # 68

# byte -> 2-bit base code; 255 marks anything that is not A/C/G/T (IUPAC ambiguity, gaps).
_BASE_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _BASE_CODE[_b] = _i
    _BASE_CODE[ord(chr(_b).lower())] = _i
_BASE_CODE[ord("U")] = _BASE_CODE[ord("u")] = 3

_COMPLEMENT = bytes.maketrans(b"ACGTURYKMBVDHSWNacgturykmbvdhswn", b"TGCAAYRMKVBHDSWNtgcaayrmkvbhdswn")

# The same base codes as a bytes.translate table (much faster than a numpy lookup on whole genomes);
# 4 marks anything that is not A/C/G/T/U.
_BASE_TRANSLATE = bytes(int(c) if c != 255 else 4 for c in _BASE_CODE)
NOT_A_CODON = 255  # codon_tracks: a codon with a base that is not A/C/G/T/U


def reverse_complement(seq: bytes) -> bytes:
    return seq.translate(_COMPLEMENT)[::-1]


def codon_ids(seq: bytes) -> np.ndarray | None:
    """Token ids of the codons in seq (length a multiple of 3); None if a base is not A/C/G/T/U."""
    codes = _BASE_CODE[np.frombuffer(seq, dtype=np.uint8)]
    if codes.size and codes.max() == 255:
        return None
    c = codes.reshape(-1, 3).astype(np.uint8)
    return (c[:, 0] * 16 + c[:, 1] * 4 + c[:, 2] + CODON_OFFSET).astype(np.uint8)


def codon_tracks(seq: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the codon at every offset of seq, read on each strand, in one pass over the sequence.

    forward[i] is the codon seq[i:i+3]; reverse[i] is its reverse complement (the codon read on the
    other strand from the same three bases). NOT_A_CODON where one of the bases is not A/C/G/T/U.
    Both have len(seq) - 2 entries, so codon k of an in-frame sequence is forward[3 * k].
    """
    b = np.frombuffer(seq.translate(_BASE_TRANSLATE), dtype=np.uint8)
    if b.size < 3:
        return np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.uint8)
    b0, b1, b2 = b[:-2], b[1:-1], b[2:]
    middle = b1 << 2
    forward = b0 << 4
    forward |= middle
    forward |= b2
    forward += CODON_OFFSET
    reverse = b2 << 4
    reverse |= middle
    reverse |= b0
    np.subtract(63 + CODON_OFFSET, reverse, out=reverse)  # complement: base code c -> 3 - c, codon v -> 63 - v
    if b.max() > 3:
        bad = b > 3
        bad = bad[:-2] | bad[1:-1] | bad[2:]
        forward[bad] = NOT_A_CODON
        reverse[bad] = NOT_A_CODON
    return forward, reverse


def first_bad_base(seq: str) -> int | None:
    """0-based index of the first character that is not A/C/G/T/U, or None."""
    codes = _BASE_CODE[np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)]
    bad = np.flatnonzero(codes == 255)
    return int(bad[0]) if bad.size else None


class GeneticCode:
    """Lookup tables for one NCBI translation table, indexed by token id."""

    def __init__(self, table_id: int):
        try:
            table = CodonTable.unambiguous_dna_by_id[table_id]
        except KeyError:
            raise ValueError(f"unknown NCBI translation table {table_id}") from None
        self.table_id = table_id
        self.aa = np.full(VOCAB_SIZE, ord("?"), dtype=np.uint8)  # '?' for specials
        self.is_stop = np.zeros(VOCAB_SIZE, dtype=bool)
        self.is_start = np.zeros(VOCAB_SIZE, dtype=bool)
        for codon in CODONS:
            tid = STOI[codon]
            if codon in table.stop_codons:
                self.aa[tid] = ord("*")
                self.is_stop[tid] = True
            else:
                self.aa[tid] = ord(table.forward_table[codon])
            self.is_start[tid] = codon in table.start_codons

    def translate(
        self, ids: np.ndarray, exceptions: tuple[tuple[int, str], ...] = (), initiator: bool = True
    ) -> str:
        """Protein of codon ids: start codon read as M (initiator), stop as '*', exceptions (Sec, Pyl) applied."""
        aa = self.aa[ids].copy()
        if initiator and ids.size and self.is_start[ids[0]]:
            aa[0] = ord("M")
        for index, letter in exceptions:
            if 0 <= index < aa.size:
                aa[index] = ord(letter)
        return aa.tobytes().decode("ascii")


@cache
def genetic_code(table_id: int) -> GeneticCode:
    return GeneticCode(table_id)


def save_itos(path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(ITOS, indent=0))
    tmp.replace(path)


def load_itos(path: str | Path) -> list[str]:
    itos = json.loads(Path(path).read_text())
    if itos != ITOS:
        raise ValueError(f"{path}: vocabulary differs from codonlm's fixed vocabulary; re-run prepare")
    return itos


def loss_mask(targets):
    """True where a target token is scored: codons and <EOS_CDS>; works on numpy arrays and torch tensors."""
    return (targets != PAD) & (targets != BOS) & (targets != SEP)
