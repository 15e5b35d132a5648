"""Element symbols for Z = 1..100 (so writers need no pymatgen)."""

SYMBOLS: tuple[str, ...] = tuple(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr
    Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb
    Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm""".split()
)

assert len(SYMBOLS) == 100


def symbol(z: int) -> str:
    """Atomic number (1..100) -> element symbol; ValueError otherwise."""
    if not 1 <= z <= len(SYMBOLS):
        raise ValueError(f"atomic number {z} outside 1..{len(SYMBOLS)}")
    return SYMBOLS[z - 1]
