"""Synthesis constraints on a designed gene, enforced with DnaChisel (Zulkower & Rosser 2020).

The model's design is the proposal; DnaChisel repairs it with as few changes as it can
(constraints: the ones asked for plus EnforceTranslation, always on, with the start codon kept;
objective: AvoidChanges). Why the proposal and not the model's likelihood as DnaChisel's objective:
the model's best sequence is already what decoding found, a constraint breach is local (a site, a GC
window, a run of one base), and changing the fewest codons keeps the rest of the model's choices; a
likelihood objective would rescore the whole gene at every one of DnaChisel's thousands of mutations.
What cannot be satisfied is named, one label per constraint, never dropped.

No internal Shine-Dalgarno avoidance: its strength depends on the host's 16S rRNA 3' end and on the
spacing to a start codon downstream, so a clean, host-independent motif definition does not exist
(AGGAGG alone can be given with `--avoid AGGAGG`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from codonlm.errors import UserError

_IUPAC_DNA = re.compile(r"^[ACGTRYKMSWBDHVN]+$")


@dataclass
class Constraints:
    """What a design must respect: sites to avoid (name -> IUPAC site), GC bounds, the longest homopolymer."""

    sites: dict[str, str] = field(default_factory=dict)
    gc: tuple[float, float] | None = None
    gc_window: int | None = None
    max_homopolymer: int | None = None

    def __bool__(self) -> bool:
        return bool(self.sites or self.gc or self.max_homopolymer)

    def labels(self) -> list[str]:
        """One label per constraint, as the output names unsatisfied ones."""
        out = [f"avoid {n}" + (f" ({s})" if n != s else "") for n, s in self.sites.items()]
        if self.gc:
            out.append(f"GC {self.gc[0]:g}-{self.gc[1]:g}")
            if self.gc_window:
                out.append(f"GC {self.gc[0]:g}-{self.gc[1]:g} in {self.gc_window}-nt windows")
        if self.max_homopolymer:
            out.append(f"homopolymer <= {self.max_homopolymer}")
        return out


def _enzyme_site(name: str) -> str | None:
    from Bio.Restriction import AllEnzymes

    by_lower = {str(e).lower(): e for e in AllEnzymes}
    enzyme = by_lower.get(name.lower())
    return None if enzyme is None else str(enzyme.site)


def parse_constraints(avoid: list[str] | str | None = None, gc: str | tuple[float, float] | None = None,
                      gc_window: int | None = None, max_homopolymer: int | None = None) -> Constraints:
    """Checked constraints; an unknown enzyme, a bad site or bound is a one-line UserError."""
    items = avoid.split(",") if isinstance(avoid, str) else list(avoid or [])
    sites: dict[str, str] = {}
    for item in (i.strip() for i in items if i.strip()):
        site = _enzyme_site(item)
        if site is None and _IUPAC_DNA.match(item.upper()) and len(item) >= 3:
            site = item.upper()
            item = site
        if site is None:
            raise UserError(f"--avoid: '{item}' is neither a restriction enzyme Biopython knows (e.g. EcoRI, BsaI) "
                            "nor a DNA site (IUPAC letters, e.g. GAATTC)")
        sites[item] = site
    bounds = _gc_bounds(gc) if gc is not None else None
    if gc_window is not None and (bounds is None or gc_window < 10):
        raise UserError("--gc-window needs --gc LOW-HIGH and a window of at least 10 nt")
    if max_homopolymer is not None and max_homopolymer < 2:
        raise UserError(f"--max-homopolymer {max_homopolymer}: give at least 2 (a homopolymer of 1 is any base)")
    return Constraints(sites, bounds, gc_window, max_homopolymer)


def _gc_bounds(gc: str | tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in (gc.split("-") if isinstance(gc, str) else gc))
    except (ValueError, TypeError):
        raise UserError(f"--gc '{gc}': give LOW-HIGH fractions, e.g. 0.4-0.6") from None
    if low > 1 or high > 1:  # percentages
        low, high = low / 100, high / 100
    if not 0 <= low <= high <= 1:
        raise UserError(f"--gc '{gc}': need 0 <= LOW <= HIGH <= 1 (or percentages)")
    return low, high


def _specs(c: Constraints) -> list[tuple[str, object]]:
    """(label, DnaChisel specification) of each constraint, in `labels()` order."""
    import dnachisel as dc

    labels = iter(c.labels())
    out = [(next(labels), dc.AvoidPattern(dc.DnaNotationPattern(site), strand="both")) for site in c.sites.values()]
    if c.gc:
        out.append((next(labels), dc.EnforceGCContent(mini=c.gc[0], maxi=c.gc[1])))
        if c.gc_window:
            out.append((next(labels), dc.EnforceGCContent(mini=c.gc[0], maxi=c.gc[1], window=c.gc_window)))
    if c.max_homopolymer:
        label = next(labels)
        out += [(label, dc.AvoidPattern(dc.HomopolymerPattern(b, c.max_homopolymer + 1))) for b in "ACGT"]
    return out


@contextlib.contextmanager
def seeded_dnachisel(seed: int = 0) -> Iterator[None]:
    """DnaChisel draws its mutations from numpy's global random state: seed it for one call (and put the
    caller's state back), so the same design is repaired, or optimised, the same way in every process."""
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def enforce(dna: str, c: Constraints, table_id: int) -> tuple[str, list[str]]:
    """(repaired DNA, labels of the constraints it still breaks) for one design; the protein never changes."""
    import dnachisel as dc
    from Bio.Data.CodonTable import unambiguous_dna_by_id

    specs = _specs(c)
    translation = dc.EnforceTranslation(genetic_table=unambiguous_dna_by_id[table_id].names[0], start_codon="keep")
    problem = dc.DnaOptimizationProblem(dna, constraints=[translation, *(s for _, s in specs)],
                                        objectives=[dc.AvoidChanges()], logger=None)
    with seeded_dnachisel():
        try:
            problem.resolve_constraints()
        except dc.NoSolutionError:  # one at a time: satisfy what can be, then name the rest
            for spec in problem.constraints:
                try:
                    problem.resolve_constraint(spec)
                except dc.NoSolutionError:
                    continue
        passes = [bool(e.passes) for e in problem.constraints_evaluations()]  # in constraint order
        if all(passes):
            problem.optimize()  # undo changes the constraints did not need
    unsatisfied = [label for (label, _), ok in zip(specs, passes[1:], strict=True) if not ok]
    return problem.sequence, sorted(set(unsatisfied), key=unsatisfied.index)


def breaches(dna: str, c: Constraints) -> list[str]:
    """Labels of the constraints `dna` breaks, checked directly (not through DnaChisel)."""
    from Bio.Seq import Seq

    out = []
    rc = str(Seq(dna).reverse_complement())
    for label, site in zip(c.labels(), c.sites.values(), strict=False):
        pattern = re.compile("(?=" + _iupac_regex(site) + ")")
        if pattern.search(dna) or pattern.search(rc):
            out.append(label)
    labels = c.labels()[len(c.sites):]
    if c.gc:
        g = (dna.count("G") + dna.count("C")) / max(len(dna), 1)
        if not c.gc[0] <= g <= c.gc[1]:
            out.append(labels[0])
        if c.gc_window and _window_gc_breach(dna, c.gc, c.gc_window):
            out.append(labels[1])
    if c.max_homopolymer and re.search(r"([ACGT])\1{" + str(c.max_homopolymer) + "}", dna):
        out.append(labels[-1])
    return out


def _iupac_regex(site: str) -> str:
    codes = {"R": "[AG]", "Y": "[CT]", "K": "[GT]", "M": "[AC]", "S": "[CG]", "W": "[AT]", "B": "[CGT]",
             "D": "[AGT]", "H": "[ACT]", "V": "[ACG]", "N": "[ACGT]"}
    return "".join(codes.get(ch, ch) for ch in site)


def _window_gc_breach(dna: str, bounds: tuple[float, float], window: int) -> bool:
    import numpy as np

    if len(dna) < window:
        return False
    is_gc = np.frombuffer(dna.encode(), dtype=np.uint8)
    is_gc = ((is_gc == ord("G")) | (is_gc == ord("C"))).astype(np.int64)
    sums = np.convolve(is_gc, np.ones(window, dtype=np.int64), "valid") / window
    return bool((sums < bounds[0] - 1e-9).any() or (sums > bounds[1] + 1e-9).any())
