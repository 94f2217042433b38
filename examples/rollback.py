"""Rollback netcode on writewatch.Snapshots.

A deterministic game whose whole state lives in a writewatch.Region: a
world of cells that two players paint and that grows like a cellular
automaton around them, and particles that bounce about and mark the cells
they cross.  Two peers play it.  Peer B's inputs reach peer A `--delay`
frames late, so A simulates each frame with a *prediction* of B's input
(B's last known one), saves the state every frame, and when B's real input
turns out different from the prediction, restores the snapshot of the
frame it arrived for and re-simulates up to the present.  At the end A's
state must be byte-equal to a run where every input was on time.

    python examples/rollback.py                  # 16 MiB state, 600 frames
    python examples/rollback.py --frames 60 --side 512 --delay 3 --backend mprotect

It prints what saving and restoring cost next to a full copy of the state
(what GGPO-style engines do every frame), measured in the same run.
"""

import argparse
import random
import sys
import time

import numpy as np

import writewatch

NPARTICLES = 64
BRUSH = 12          # side of the square a player paints
GROW = 40           # side of the automaton's window around a player
MOVES = ((0, 0), (0, -3), (0, 3), (-3, 0), (3, 0))      # input -> (dx, dy)


class Game:
    """The state, laid out in a Region: the world (side x side cells of one
    byte), the particles (x, y, vx, vy as int32), the players (x, y, score
    as int64) and the frame counter.  Every step is integer arithmetic on
    numpy views of the region: the same inputs give the same bytes."""

    def __init__(self, side, backend):
        self.side = side
        world = side * side
        parts = NPARTICLES * 4 * 4
        size = world + parts + 2 * 3 * 8 + 8
        self.region = writewatch.Region(size, backend=backend)
        mem = np.frombuffer(self.region, dtype=np.uint8)
        self.mem = mem
        self.world = mem[:world].reshape(side, side)
        self.particles = mem[world:world + parts].view(np.int32).reshape(4, NPARTICLES)
        self.players = mem[world + parts:world + parts + 48].view(np.int64).reshape(2, 3)
        self.frame = mem[world + parts + 48:world + parts + 56].view(np.int64)
        rng = np.random.default_rng(2024)            # the same start for every peer
        self.particles[0] = rng.integers(0, side, NPARTICLES)
        self.particles[1] = rng.integers(0, side, NPARTICLES)
        self.particles[2] = rng.integers(-4, 5, NPARTICLES)
        self.particles[3] = rng.integers(-4, 5, NPARTICLES)
        self.players[0] = (side // 3, side // 3, 0)
        self.players[1] = (2 * side // 3, 2 * side // 3, 0)

    def step(self, inputs):
        side, w = self.side, self.world
        for i, move in enumerate(inputs):
            dx, dy = MOVES[move]
            x = (int(self.players[i, 0]) + dx) % (side - GROW)
            y = (int(self.players[i, 1]) + dy) % (side - GROW)
            self.players[i, 0], self.players[i, 1] = x, y
            w[y:y + BRUSH, x:x + BRUSH] += np.uint8(1 + i)
            # The automaton: each cell of the window takes its neighbours' sum.
            win = w[y:y + GROW, x:x + GROW].astype(np.int32)
            grown = (win + np.roll(win, 1, 0) + np.roll(win, -1, 0)
                     + np.roll(win, 1, 1) + np.roll(win, -1, 1)) % 7
            w[y:y + GROW, x:x + GROW] = np.where(grown > 3, win + 1, win).astype(np.uint8)
            self.players[i, 2] += int(w[y, x])
        px, py, vx, vy = self.particles
        px += vx
        py += vy
        for pos, vel in ((px, vx), (py, vy)):
            out = (pos < 0) | (pos >= side)
            vel[out] = -vel[out]
            np.clip(pos, 0, side - 1, out=pos)
        # Particles near a player are pushed by the player's input.
        for i, move in enumerate(inputs):
            near = (np.abs(px - self.players[i, 0]) < 24) & (np.abs(py - self.players[i, 1]) < 24)
            vx[near] += MOVES[move][0] // 3
            vy[near] += MOVES[move][1] // 3
            np.clip(vx, -6, 6, out=vx)
            np.clip(vy, -6, 6, out=vy)
        w[py, px] ^= np.uint8(0x5A)
        self.frame[0] += 1

    def bytes(self):
        return self.mem.tobytes()

    def close(self):
        # The views are buffer exports of the region: drop them, then close.
        self.mem = self.world = self.particles = self.players = self.frame = None
        self.region.close()


def inputs_of(seed, frames):
    """A peer's inputs: held for a while, then changed (what makes
    predictions go wrong)."""
    rng = random.Random(seed)
    out, cur = [], 0
    for _ in range(frames):
        if rng.random() < 0.25:
            cur = rng.randrange(len(MOVES))
        out.append(cur)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--delay", type=int, default=4, help="frames B's inputs arrive late")
    ap.add_argument("--side", type=int, default=4096, help="world side: side**2 bytes of cells")
    ap.add_argument("--backend", default=None)
    args = ap.parse_args(argv)
    frames, delay = args.frames, args.delay
    a_in = inputs_of(1, frames)
    b_in = inputs_of(2, frames)

    # The reference: every input on time.
    ontime = Game(args.side, args.backend)
    for f in range(frames):
        ontime.step((a_in[f], b_in[f]))
    want = ontime.bytes()
    ontime.close()

    # Peer A: B's input for frame f arrives at tick f + delay.
    game = Game(args.side, args.backend)
    snaps = writewatch.Snapshots(game.region, keep=delay + 2)
    copy = np.empty_like(game.mem)
    t_save, t_restore, t_copy = [], [], []
    known = {}            # frame -> B's real input
    used = {}             # frame -> B's input the simulation used
    done = 0              # frames simulated
    rollbacks = resimulated = 0

    def predict(f):
        last = max((g for g in known if g <= f), default=None)
        return known[last] if last is not None else 0

    def simulate(f):
        b = known.get(f, predict(f))
        used[f] = b
        game.step((a_in[f], b))
        t0 = time.perf_counter()
        sid = snaps.save()                  # the state before frame f + 1
        t_save.append(time.perf_counter() - t0)
        assert sid == f + 1
        t0 = time.perf_counter()
        np.copyto(copy, game.mem)           # what a full copy would cost
        t_copy.append(time.perf_counter() - t0)

    assert snaps.save() == 0                # the state before frame 0
    for tick in range(frames + delay):
        late = tick - delay
        if 0 <= late < frames:
            known[late] = b_in[late]
            if late < done and used[late] != known[late]:
                # Mispredicted: back to the state before frame `late`, and
                # forward again with what is known now.
                t0 = time.perf_counter()
                snaps.restore(late)
                t_restore.append(time.perf_counter() - t0)
                rollbacks += 1
                for f in range(late, done):
                    simulate(f)
                    resimulated += 1
        if tick < frames:
            simulate(tick)
            done = tick + 1
    got = game.bytes()
    nbytes = snaps.nbytes
    size = game.region.size
    backend = game.region.backend
    snaps.close()
    game.close()

    ms = lambda xs: 1e3 * float(np.median(xs)) if xs else float("nan")   # noqa: E731
    print("rollback: %.1f MiB of state, %d frames, peer B's inputs %d frames late, backend %s"
          % (size / 2**20, frames, delay, backend))
    print("  rollbacks      %d (%d frames re-simulated)" % (rollbacks, resimulated))
    print("  save()         %.3f ms median" % ms(t_save))
    print("  restore()      %.3f ms median" % ms(t_restore))
    print("  full copy      %.3f ms median (np.copyto of the whole state, same run)" % ms(t_copy))
    print("  snapshots hold %.1f MiB (keep=%d)" % (nbytes / 2**20, delay + 2))
    equal = got == want
    print("  final state byte-equal to the on-time run: %s" % ("yes" if equal else "NO"))
    if not equal:
        return 1
    if rollbacks == 0:
        print("  (no input was mispredicted: nothing was rolled back)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
