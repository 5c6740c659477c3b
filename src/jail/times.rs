//! One address's failure times, kept small: a flood of spoofed sources is a
//! million of these.

/// Failure times of one address: the common single failure inline, more on
/// the heap. Kept small: a flood of spoofed sources is a million of these.
#[derive(Clone, Debug)]
pub(super) enum Times {
    One(i64),
    // A thin pointer keeps this enum at 16 bytes (`Vec` or `Box<[_]>` would
    // not), which is most of a tracked address's size.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<i64>>),
}

impl Times {
    /// Drops times at or before `horizon`, adds `weight` copies of `t`
    /// (keeping the newest `cap`), returns the count.
    pub(super) fn add(&mut self, t: i64, horizon: i64, weight: u32, cap: usize) -> usize {
        let cap = cap.max(1);
        if let Times::Many(v) = self {
            // In place: no allocation once an address has a vector.
            v.retain(|&x| x > horizon);
            for _ in 0..weight.max(1) {
                if v.len() >= cap {
                    v.remove(0);
                }
                v.push(t);
            }
            return v.len();
        }
        let Times::One(x) = *self else { return 0 };
        let keep_old = x > horizon;
        let n = usize::from(keep_old) + weight.max(1) as usize;
        if n.min(cap) == 1 {
            *self = Times::One(t);
            return 1;
        }
        let mut v = Vec::with_capacity(cap.min(n).max(2));
        if keep_old {
            v.push(x);
        }
        for _ in 0..weight.max(1) {
            if v.len() >= cap {
                v.remove(0);
            }
            v.push(t);
        }
        let len = v.len();
        *self = Times::Many(Box::new(v));
        len
    }

    pub(super) fn last(&self) -> i64 {
        match self {
            Times::One(x) => *x,
            Times::Many(v) => v.last().copied().unwrap_or(i64::MIN),
        }
    }

    pub(super) fn shift(&mut self, delta: i64) {
        match self {
            Times::One(x) => *x += delta,
            Times::Many(v) => v.iter_mut().for_each(|x| *x += delta),
        }
    }
}
