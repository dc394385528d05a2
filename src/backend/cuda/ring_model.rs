//! A randomized model of `decoder_wgmma`'s mbarrier ring (`LB_DW_MBAR` in
//! `cuda/decoder_tail_mma.cu`, one chunk per slot), run at the ring depths the kernel gets
//! ([`dec_wgmma_stages`]). Sixteen warps in four warpgroups step in random order; each warp's
//! cp.async groups land at random times, and each warpgroup's wgmmas finish in order at random
//! times. The model checks what the kernel relies on:
//! - a chunk is read (fragment loads, wgmma) only once every warp's copies of it (and its TMA
//!   transfer) have landed;
//! - a slot is refilled only once every read of its previous load is over, the wgmmas'
//!   included;
//! - every mbarrier arrival lands in the phase it is meant for, and no wait ever sees its
//!   barrier two phases on (the parity would alias);
//! - every run ends (no deadlock).
//!
//! The kernel's schedule, per warp: loads 0 ..= S − 3 issued, wait for load 0, publish it;
//! then per load c: wait `full[c % S]`, read and issue the wgmma, wait for the previous wgmma
//! (`wgmma.wait_group 1`), release load c − 1 (`empty`), wait until every warp released load
//! c − 2 and refill its slot with load c + S − 2, then publish load c + 2 once this warp's
//! copies of it landed (`cp.async.wait_group S − 4`; at c = 0 load 1 first, `S − 3`).
//! With `LB_DW_TMA` thread 0 also moves each load by a transfer issued with its copies: an
//! `expect_tx` arrival on `full` (17 per phase), and the phase waits until it lands.

use std::collections::VecDeque;

use super::mma::{DEC_WGMMA_BM, DEC_WGMMA_BM_FEW, dec_wgmma_stages};
use crate::testing::Rng;

const WARPS: usize = 16;
const WARPGROUPS: usize = 4;

/// An mbarrier of `count` arrivals per phase, and the transfers (`expect_tx`) a phase also
/// waits for.
struct Bar {
    count: usize,
    phase: usize,
    arrived: usize,
    transfers: usize,
}

impl Bar {
    fn new(count: usize) -> Self {
        Self {
            count,
            phase: 0,
            arrived: 0,
            transfers: 0,
        }
    }

    fn check(&self, phase: usize, what: &str) -> Result<(), String> {
        if self.phase != phase {
            return Err(format!("{what}: for phase {phase} at phase {}", self.phase));
        }
        Ok(())
    }

    fn complete(&mut self) {
        if self.arrived == self.count && self.transfers == 0 {
            self.arrived = 0;
            self.phase += 1;
        }
    }

    fn arrive(&mut self, phase: usize, what: &str) -> Result<(), String> {
        self.check(phase, what)?;
        self.arrived += 1;
        self.complete();
        Ok(())
    }

    /// `mbarrier.arrive.expect_tx`: an arrival and one transfer more to wait for.
    fn expect(&mut self, phase: usize, what: &str) -> Result<(), String> {
        self.check(phase, what)?;
        self.transfers += 1;
        self.arrived += 1;
        Ok(())
    }

    /// A transfer of `phase` landed (`complete_tx`).
    fn landed(&mut self, phase: usize, what: &str) -> Result<(), String> {
        self.check(phase, what)?;
        self.transfers -= 1;
        self.complete();
        Ok(())
    }

    /// `try_wait.parity` for the completion of `phase`.
    fn done(&self, phase: usize, what: &str) -> Result<bool, String> {
        if self.phase != phase && self.phase != phase + 1 {
            return Err(format!(
                "{what}: waits for phase {phase} at phase {} (parity alias)",
                self.phase
            ));
        }
        Ok(self.phase == phase + 1)
    }
}

/// Where a warp is in the schedule (per load `c`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pc {
    Start,
    PublishFirst,
    WaitFull,
    Read,
    Issue,
    WaitMma,
    Refill,
    PublishSecond,
    PublishLead,
    Drain,
    Done,
}

struct Model {
    s: usize,
    nl: usize,
    rng: Rng,
    now: u64,
    full: Vec<Bar>,
    empty: Vec<Bar>,
    /// slot, warp: the load whose copies by that warp landed there (and last, with `tma`,
    /// the load whose TMA transfer did)
    part: Vec<[Option<usize>; WARPS + 1]>,
    /// copies in flight: (warp, load, lands at)
    pending: Vec<(usize, usize, u64)>,
    /// `LB_DW_TMA`: warp 0 (its thread 0) also moves each load by a transfer that completes
    /// on `full`, whose phases then take one arrival more
    tma: bool,
    /// transfers in flight: (load, lands at)
    transfers: Vec<(usize, u64)>,
    /// per warp, per commit group: its load (None for an empty group)
    groups: Vec<Vec<Option<usize>>>,
    read: Vec<Vec<bool>>,
    arrived: Vec<Vec<usize>>,
    issued: Vec<Vec<bool>>,
    finished: Vec<Vec<bool>>,
    /// per warpgroup, wgmmas in flight: (load, finishes at), in issue order
    mma: Vec<VecDeque<(usize, u64)>>,
    pc: Vec<(Pc, usize)>,
    /// The schedule's two waits that matter, as the kernel has them: `cp.async.wait_group`
    /// before publishing load c + 2 (S − 4), and the wait for load c − 2's release before
    /// its slot is refilled (the model's own test breaks each).
    publish_wait: usize,
    refill_waits: bool,
    /// the `full` phase waits for the TMA transfer (`expect_tx`, not a plain arrival)
    expect_transfer: bool,
}

impl Model {
    fn new(s: usize, nl: usize, seed: u64, tma: bool) -> Self {
        Self {
            s,
            nl,
            rng: Rng::new(seed),
            now: 0,
            full: (0..s).map(|_| Bar::new(WARPS + usize::from(tma))).collect(),
            empty: (0..s).map(|_| Bar::new(WARPS)).collect(),
            // without TMA the transfer's part reads as always there
            part: vec![[None; WARPS + 1]; s],
            pending: Vec::new(),
            tma,
            transfers: Vec::new(),
            groups: vec![Vec::new(); WARPS],
            read: vec![vec![false; nl]; WARPS],
            arrived: vec![vec![0; nl]; WARPGROUPS],
            issued: vec![vec![false; nl]; WARPGROUPS],
            finished: vec![vec![false; nl]; WARPGROUPS],
            mma: vec![VecDeque::new(); WARPGROUPS],
            pc: vec![(Pc::Start, 0); WARPS],
            publish_wait: s - 4,
            refill_waits: true,
            expect_transfer: true,
        }
    }

    /// Warp `w` copies its part of load `j` (a commit group, empty past the last load).
    fn load(&mut self, w: usize, j: usize) -> Result<(), String> {
        if j < self.nl {
            if j >= self.s {
                let prev = j - self.s;
                if let Some(v) = (0..WARPS).find(|&v| !self.read[v][prev]) {
                    return Err(format!(
                        "load {j} by warp {w}: warp {v} has not read load {prev}"
                    ));
                }
                if let Some(g) = (0..WARPGROUPS).find(|&g| !self.finished[g][prev]) {
                    return Err(format!(
                        "load {j} by warp {w}: wgmma of load {prev} (group {g}) in flight"
                    ));
                }
            }
            let at = self.now + self.rng.int(1, 60) as u64;
            self.pending.push((w, j, at));
            if self.tma && w == 0 {
                let s = self.s;
                let what = format!("expect_tx load {j}");
                if self.expect_transfer {
                    self.full[j % s].expect(j / s, &what)?;
                } else {
                    self.full[j % s].arrive(j / s, &what)?;
                }
                let at = self.now + self.rng.int(1, 90) as u64;
                self.transfers.push((j, at));
            }
        }
        self.groups[w].push((j < self.nl).then_some(j));
        Ok(())
    }

    /// `cp.async.wait_group n` of warp `w`: all but its newest `n` groups landed?
    fn groups_landed(&self, w: usize, n: usize) -> bool {
        let g = &self.groups[w];
        g[..g.len().saturating_sub(n)]
            .iter()
            .flatten()
            .all(|&j| !self.pending.iter().any(|&(v, k, _)| v == w && k == j))
    }

    fn publish(&mut self, w: usize, j: usize) -> Result<(), String> {
        let s = self.s;
        self.full[j % s].arrive(j / s, &format!("full[{}] load {j} warp {w}", j % s))
    }

    /// One step of warp `w`: Ok(true) if it moved on.
    fn step(&mut self, w: usize) -> Result<bool, String> {
        let (s, nl) = (self.s, self.nl);
        let g = w / 4;
        let (pc, c) = self.pc[w];
        let next = match pc {
            Pc::Start => {
                for j in 0..s - 2 {
                    self.load(w, j)?;
                }
                (Pc::PublishFirst, 0)
            }
            Pc::PublishFirst => {
                if !self.groups_landed(w, s - 3) {
                    return Ok(false);
                }
                self.publish(w, 0)?;
                (Pc::WaitFull, 0)
            }
            Pc::WaitFull => {
                if !self.full[c % s].done(c / s, &format!("full wait load {c} warp {w}"))? {
                    return Ok(false);
                }
                (Pc::Read, c)
            }
            Pc::Read => {
                let parts = WARPS + usize::from(self.tma);
                if let Some(v) = (0..parts).find(|&v| self.part[c % s][v] != Some(c)) {
                    return Err(format!(
                        "warp {w} reads load {c}: warp {v}'s part holds {:?}",
                        self.part[c % s][v]
                    ));
                }
                self.read[w][c] = true;
                self.arrived[g][c] += 1;
                (Pc::Issue, c)
            }
            Pc::Issue => {
                // wgmma is warpgroup-collective: it goes once all four warps are there
                if self.arrived[g][c] < 4 {
                    return Ok(false);
                }
                if !self.issued[g][c] {
                    self.issued[g][c] = true;
                    let after = self.mma[g]
                        .back()
                        .map_or(self.now, |&(_, at)| at.max(self.now));
                    let at = after + self.rng.int(1, 40) as u64;
                    self.mma[g].push_back((c, at));
                }
                (Pc::WaitMma, c)
            }
            Pc::WaitMma => {
                if self.mma[g].iter().any(|&(k, _)| k < c) {
                    return Ok(false);
                }
                if c >= 1 {
                    let what = format!("empty[{}] load {} warp {w}", (c - 1) % s, c - 1);
                    self.empty[(c - 1) % s].arrive((c - 1) / s, &what)?;
                }
                (Pc::Refill, c)
            }
            Pc::Refill => {
                let j = c + s - 2;
                if self.refill_waits && j >= s && j < nl {
                    let what = format!("empty wait load {j} warp {w}");
                    if !self.empty[j % s].done(j / s - 1, &what)? {
                        return Ok(false);
                    }
                }
                self.load(w, j)?;
                if c == 0 && nl > 1 {
                    (Pc::PublishSecond, c)
                } else {
                    (Pc::PublishLead, c)
                }
            }
            Pc::PublishSecond => {
                if !self.groups_landed(w, s - 3) {
                    return Ok(false);
                }
                self.publish(w, 1)?;
                (Pc::PublishLead, c)
            }
            Pc::PublishLead => {
                if c + 2 < nl {
                    if !self.groups_landed(w, self.publish_wait) {
                        return Ok(false);
                    }
                    self.publish(w, c + 2)?;
                }
                if c + 1 < nl {
                    (Pc::WaitFull, c + 1)
                } else {
                    (Pc::Drain, c)
                }
            }
            Pc::Drain => {
                if !self.mma[g].is_empty() || !self.groups_landed(w, 0) {
                    return Ok(false);
                }
                (Pc::Done, c)
            }
            Pc::Done => return Ok(false),
        };
        self.pc[w] = next;
        Ok(true)
    }

    fn run(&mut self) -> Result<(), String> {
        let mut order: Vec<usize> = (0..WARPS).collect();
        while self.pc.iter().any(|&(pc, _)| pc != Pc::Done) {
            self.now += 1;
            if self.now > 1_000_000 {
                return Err(format!("deadlock: warps at {:?}", self.pc));
            }
            let now = self.now;
            for (w, j, _) in take_due(&mut self.pending, |p| p.2 <= now) {
                self.part[j % self.s][w] = Some(j);
            }
            for (j, _) in take_due(&mut self.transfers, |t| t.1 <= now) {
                let s = self.s;
                self.part[j % s][WARPS] = Some(j);
                if self.expect_transfer {
                    self.full[j % s].landed(j / s, &format!("complete_tx load {j}"))?;
                }
            }
            for g in 0..WARPGROUPS {
                while let Some(&(j, at)) = self.mma[g].front() {
                    if at > now {
                        break;
                    }
                    self.mma[g].pop_front();
                    self.finished[g][j] = true;
                }
            }
            for i in (1..WARPS).rev() {
                order.swap(i, self.rng.usize(0, i));
            }
            for &w in &order {
                if self.rng.unit() < 0.5 {
                    self.step(w)?;
                }
            }
        }
        Ok(())
    }
}

/// The items of `items` that are `due`, removed from it.
fn take_due<T>(items: &mut Vec<T>, due: impl Fn(&T) -> bool) -> Vec<T> {
    let (now, later) = std::mem::take(items).into_iter().partition(|x| due(x));
    *items = later;
    now
}

/// Every ring depth the kernel runs with, short and long runs (1 load to several laps).
#[test]
fn mbarrier_ring_schedule_is_safe() {
    let mut depths: Vec<usize> = [DEC_WGMMA_BM_FEW, DEC_WGMMA_BM]
        .iter()
        .map(|&bm| dec_wgmma_stages(true, bm, true))
        .collect();
    depths.push(6); // the fewest slots the kernel accepts
    for s in depths {
        for nl in [1, 2, 3, 4, s - 2, s - 1, s, s + 1, 2 * s + 3, 40] {
            for seed in 0..6 {
                for tma in [false, true] {
                    Model::new(s, nl, seed * 7919 + (s * 31 + nl) as u64, tma)
                        .run()
                        .unwrap_or_else(|e| {
                            panic!("S = {s}, {nl} loads, seed {seed}, TMA {tma}: {e}")
                        });
                }
            }
        }
    }
}

/// The model finds what it should: a load published one wait earlier (before this warp's
/// copies of it need have landed: caught on the shallowest ring, where the copies have the
/// least time), a slot refilled without waiting for its release, a TMA transfer that the
/// `full` phase does not wait for.
#[test]
fn mbarrier_ring_model_catches_a_broken_schedule() {
    let broken = |seed: u64, tweak: fn(&mut Model)| {
        let mut m = Model::new(6, 40, seed, seed % 2 == 1);
        tweak(&mut m);
        m.run()
    };
    let early = |m: &mut Model| m.publish_wait = m.s - 3;
    let eager = |m: &mut Model| m.refill_waits = false;
    assert!((0..6).any(|seed| broken(seed, early).is_err_and(|e| e.contains("reads load"))));
    assert!((0..6).any(|seed| broken(seed, eager).is_err_and(|e| e.contains("in flight"))));
    assert!((0..6).all(|seed| broken(seed, |_| {}).is_ok()));
    let unawaited = |m: &mut Model| {
        m.expect_transfer = false;
        m.tma = true;
        m.full = (0..m.s).map(|_| Bar::new(WARPS + 1)).collect();
    };
    assert!((0..6).any(|seed| broken(seed, unawaited).is_err_and(|e| e.contains("reads load"))));
}
