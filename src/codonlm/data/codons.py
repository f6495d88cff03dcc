"""THE tokenizer: the fixed vocabulary, DNA <-> codon ids <-> protein, and the genetic codes.

Every stage converts through this module, so a gene means the same ids everywhere. Genetic codes
come from Biopython's NCBI tables rather than a copy of our own.

A gene as the model sees it is `<BOS_CDS> c1 .. cn <EOS_CDS>` (`frame_gene`); the stop codon stays in. A
host-conditioned model (model.condition_on_host) reads `<BOS_CDS> <host> c1 .. cn <EOS_CDS>`: host tokens take
the ids after the 68 fixed ones (HOST_OFFSET + index in the model's host list) and are never scored.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from Bio.Data import CodonTable

from codonlm.errors import UserError
from codonlm.log import warn

PAD, BOS, EOS, SEP = 0, 1, 2, 3
SPECIALS = ["<PAD>", "<BOS_CDS>", "<EOS_CDS>", "<SEP>"]
CODONS = ["".join(c) for c in itertools.product("ACGT", repeat=3)]  # AAA, AAC, ..., TTT
CODON_OFFSET = len(SPECIALS)
ITOS = SPECIALS + CODONS
STOI = {tok: i for i, tok in enumerate(ITOS)}
VOCAB_SIZE = len(ITOS)  # 68
HOST_OFFSET = VOCAB_SIZE  # host token i has id HOST_OFFSET + i

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
NOT_A_CODON = 255  # in_frame_codon_ids: a codon with a base that is not A/C/G/T/U


def reverse_complement(seq: bytes) -> bytes:
    return seq.translate(_COMPLEMENT)[::-1]


def codon_ids(seq: bytes) -> np.ndarray | None:
    """Token ids of the codons in seq (length a multiple of 3); None if a base is not A/C/G/T/U."""
    codes = _BASE_CODE[np.frombuffer(seq, dtype=np.uint8)]
    if codes.size and codes.max() == 255:
        return None
    c = codes.reshape(-1, 3).astype(np.uint8)
    return (c[:, 0] * 16 + c[:, 1] * 4 + c[:, 2] + CODON_OFFSET).astype(np.uint8)


def in_frame_codon_ids(seq: bytes) -> np.ndarray:
    """Token ids of the codons of an in-frame sequence (length a multiple of 3), in one numpy pass;
    NOT_A_CODON where one of a codon's bases is not A/C/G/T/U."""
    codes = np.frombuffer(seq.translate(_BASE_TRANSLATE), dtype=np.uint8).reshape(-1, 3)
    first, second, third = codes[:, 0], codes[:, 1], codes[:, 2]
    ids = first << 4
    ids |= second << 2
    ids |= third
    ids += CODON_OFFSET
    bad = (first | second | third) > 3  # 4 marks a base that is not A/C/G/T/U
    if bad.any():
        ids[bad] = NOT_A_CODON
    return ids


Gene = str | bytes | np.ndarray | Sequence[int]
"""A gene as DNA (str/bytes, length a multiple of 3) or as token ids (specials are dropped)."""


def clean_dna(text: str, source: str = "--dna") -> str:
    """Upper-case, U->T, whitespace dropped; a non-ACGT character or a length not a multiple of 3 is a
    UserError naming `source` and the 1-based position."""
    seq = "".join(text.split()).upper().replace("U", "T")
    if not seq:
        raise UserError(f"{source}: empty DNA sequence; pass codons such as ATGAAATAA")
    bad = first_bad_base(seq)
    if bad is not None:
        raise UserError(
            f"{source}: character '{seq[bad]}' at position {bad + 1} is not A/C/G/T/U; "
            "remove it or use an unambiguous sequence"
        )
    if len(seq) % 3:
        raise UserError(
            f"{source}: length {len(seq)} is not a multiple of 3 (the last codon is incomplete at "
            f"position {len(seq) - len(seq) % 3 + 1}); trim or complete it"
        )
    return seq


def as_codon_ids(seq: Gene) -> np.ndarray:
    """Codon token ids (4..67, int64) of a DNA string or a token array (special and host tokens dropped).

    Raises ValueError for DNA that is not A/C/G/T/U or not a multiple of 3 (use `clean_dna` first
    for user input, which says where).
    """
    if isinstance(seq, str):
        seq = seq.encode("ascii", "replace")
    if isinstance(seq, bytes | bytearray):
        seq = bytes(seq).strip()
        if len(seq) % 3:
            raise ValueError(f"DNA length {len(seq)} is not a multiple of 3")
        ids = codon_ids(seq)
        if ids is None:
            raise ValueError("DNA contains a base other than A/C/G/T/U")
        return ids.astype(np.int64)
    ids = np.asarray(seq, dtype=np.int64)
    if ids.ndim != 1 or (ids.size and ids.min() < 0):
        raise ValueError("token ids must be a 1-D array of vocabulary ids (0..67, host tokens 68..)")
    return ids[(ids >= CODON_OFFSET) & (ids < HOST_OFFSET)]


def gene_start(host: int | None = None) -> np.ndarray:
    """The tokens that start every gene (uint8): `<BOS_CDS>`, then the host token id when the model has one."""
    return np.array([BOS] if host is None else [BOS, host], dtype=np.uint8)


def host_token(model_cfg, name: str | None) -> int | None:
    """The token id of host `name` for a model (its `ModelConfig`: `hosts`, `host_dropout`); None for a model
    without host tokens, or for no host given to a model trained to read genes without one (host_dropout > 0:
    a gene of an unknown genome). An unknown host, or none given to a model that always saw one, is a UserError
    listing the known ones."""
    hosts = model_cfg.hosts
    if not hosts:
        if name is not None:
            raise UserError(f"host '{name}' given, but this model has no host tokens (it was trained without "
                            "model.condition_on_host); drop --host")
        return None
    if name is None:
        if model_cfg.host_dropout > 0:
            return None
        raise UserError(f"this model is conditioned on the host; pass --host (host=) one of: {', '.join(hosts)}")
    return _known_host(hosts, name)


def _known_host(hosts: Sequence[str], name: str) -> int:
    if name not in hosts:
        raise UserError(f"unknown host '{name}'; this model knows: {', '.join(hosts)}")
    return HOST_OFFSET + list(hosts).index(name)


def dataset_hosts(hosts: Sequence[str], names: Sequence[str], groups: Sequence[int]) -> list[int | None] | None:
    """The host token of each gene of a prepared split (its dataset's name, groups[i] an index into names), for
    a model with these `hosts`; None for a model without host tokens."""
    if not hosts:
        return None
    tokens = [_known_host(hosts, name) for name in names]
    return [tokens[int(d)] for d in groups]


def with_host(gene: np.ndarray, host: int | None) -> np.ndarray:
    """A framed gene (`<BOS_CDS> c1 .. <EOS_CDS>`, as stored) as a host-conditioned model reads it."""
    if host is None:
        return gene
    return np.concatenate([gene_start(host), np.asarray(gene)[1:]]).astype(np.asarray(gene).dtype)


def frame_gene(codons: np.ndarray, host: int | None = None) -> np.ndarray:
    """`gene_start(host) c1 .. cn <EOS_CDS>` as uint8: how every gene is stored and scored."""
    start = gene_start(host)
    out = np.empty(len(codons) + start.size + 1, dtype=np.uint8)
    out[: start.size], out[-1] = start, EOS
    out[start.size : -1] = codons
    return out


def frame_genes(codons: np.ndarray, lengths: np.ndarray, host: int | None = None,
                host_free: np.ndarray | None = None) -> np.ndarray:
    """frame_gene of every gene, laid end to end, in one pass: gene i is the next lengths[i] codons;
    host_free[i]: gene i without the host token (model.host_dropout)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    has_host = np.full(lengths.size, host is not None) if host_free is None else ~np.asarray(host_free, dtype=bool)
    framed = lengths + 2 + has_host
    ends = np.cumsum(framed)
    starts = ends - framed
    out = np.empty(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    is_codon = np.ones(out.size, dtype=bool)
    is_codon[starts] = False
    out[starts] = BOS
    if host is not None:
        hosted = starts[has_host] + 1
        is_codon[hosted] = False
        out[hosted] = host
    is_codon[ends - 1] = False
    out[is_codon] = codons
    out[ends - 1] = EOS
    return out


def encode(dna: str, add_bos: bool = True, add_eos: bool = False, host: int | None = None) -> np.ndarray:
    """Token ids (uint8) of clean DNA, `gene_start(host)` first (the model expects it), `<EOS_CDS>` optional."""
    ids = as_codon_ids(dna).astype(np.uint8)
    parts = [gene_start(host)] if add_bos else []
    parts.append(ids)
    if add_eos:
        parts.append(np.array([EOS], np.uint8))
    return np.concatenate(parts)


def decode(tokens: Gene) -> str:
    """DNA of the codon tokens (specials dropped); DNA input comes back normalised."""
    return "".join(CODONS[i - CODON_OFFSET] for i in as_codon_ids(tokens))


def translate(seq: Gene, table_id: int = 11, keep_stop: bool = False) -> str:
    """Protein of a gene (start codon read as M); the terminal stop is dropped unless keep_stop."""
    protein = genetic_code(table_id).translate(as_codon_ids(seq).astype(np.uint8))
    return protein if keep_stop or not protein.endswith("*") else protein[:-1]


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

    def aa_classes(self, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
        """Amino-acid class per token id of a model's vocabulary, what amino-acid accuracy compares: a codon's
        amino acid (the letter's code, '*' for stops), <EOS_CDS> a class of its own ('$'), the other specials
        and host tokens -1."""
        aa = np.full(max(vocab_size, VOCAB_SIZE), -1, dtype=np.int64)
        aa[CODON_OFFSET:VOCAB_SIZE] = self.aa[CODON_OFFSET:]
        aa[EOS] = ord("$")
        return aa


@cache
def genetic_code(table_id: int) -> GeneticCode:
    return GeneticCode(table_id)


def internal_stop_count(dna: str, table_id: int = 11) -> int:
    """Stop codons before the last codon. A CDS has one stop, at its end: another is a nonsense mutation,
    a frameshift or a wrong frame, which a model would still score or embed as if it were a gene."""
    return int(genetic_code(table_id).is_stop[as_codon_ids(dna)[:-1]].sum())


def clean_sequences(ids: list[str], seqs: list[str], source: str, skip_invalid: bool = False,
                    stops_table: int | None = None, where: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(kept ids, clean DNA, skipped ids) of a user's records, each through `clean_dna`.

    A bad record (non-ACGT, length not a multiple of 3) is a UserError naming the record (and `where` it
    is in the file: 'row 7' of a table) and the position, unless
    skip_invalid, which drops and counts it. With `stops_table` (the genetic code of a model about to score or
    embed them), records with internal stop codons are kept and flagged in one warning line, or with
    skip_invalid dropped and counted like bad records; either way one stderr line says which.
    """
    kept_ids, kept, skipped, invalid, stopped = [], [], [], [], []
    for n, (name, seq) in enumerate(zip(ids, seqs, strict=True)):
        try:
            label = f"{source} {where[n]} (id '{name}')" if where else f"{source} record '{name}'"
            dna = clean_dna(seq, label)
        except UserError as exc:
            if not skip_invalid:
                raise UserError(f"{exc} (or pass --skip-invalid to skip bad records)") from None
            invalid.append(name)
            skipped.append(name)
            continue
        if stops_table is not None and internal_stop_count(dna, stops_table):
            stopped.append(name)
            if skip_invalid:
                skipped.append(name)
                continue
        kept_ids.append(name)
        kept.append(dna)
    if skipped:
        kinds = [f"{len(names)} {what} (first: '{names[0]}')" for names, what in
                 ((invalid, "invalid"), (stopped, "with internal stop codons")) if names]
        warn(f"{source}: skipped {len(skipped)} record(s): {', '.join(kinds)}")
    elif stopped:
        warn(f"{source}: {len(stopped)} record(s) with internal stop codons (first: '{stopped[0]}'), used as given; "
             "the output counts them per record (internal_stops); --skip-invalid skips such records")
    if not kept:
        raise UserError(f"{source}: every record was skipped ({len(skipped)}); nothing left to use")
    return kept_ids, kept, skipped


def host_itos(hosts: Sequence[str] = ()) -> list[str]:
    """The vocabulary of a model with these hosts: the 68 fixed tokens, then `<HOST:name>` per host."""
    return ITOS + [f"<HOST:{h}>" for h in hosts]


def save_itos(path: str | Path, hosts: Sequence[str] = ()) -> None:
    from codonlm.io import atomic_write

    atomic_write(path, json.dumps(host_itos(hosts), indent=0))


def loss_mask(targets):
    """True where a target token is scored: codons and <EOS_CDS> (never a host token); works on numpy arrays
    and torch tensors."""
    return (targets != PAD) & (targets != BOS) & (targets != SEP) & (targets < HOST_OFFSET)
