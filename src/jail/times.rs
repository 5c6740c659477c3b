//! One address's failure times, kept small: a flood of spoofed sources is a
//! million of these.

/// Failure times of one address: the common single failure inline, more on
/// the heap. Kept small: a flood of spoofed sources is a million of these.
///
/// Each variant also carries a tag (the jail's creation number for this
/// address, to recognise it in the eviction queue): it sits in what would
/// be padding beside the enum's discriminant, so the tag costs no byte.
#[derive(Clone, Debug)]
pub(super) enum Times {
    One(i64, u32),
    // A thin pointer keeps this enum at 16 bytes (`Vec` or `Box<[_]>` would
    // not), which is most of a tracked address's size.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<i64>>, u32),
}

impl Times {
    /// A single failure at `t`, tagged `tag`.
    pub(super) fn one(t: i64, tag: u32) -> Times {
        Times::One(t, tag)
    }

    /// The tag given at creation (or by [`Times::set_tag`]).
    pub(super) fn tag(&self) -> u32 {
        match self {
            Times::One(_, tag) | Times::Many(_, tag) => *tag,
        }
    }

    /// Retags (an address given a second turn in the eviction queue).
    pub(super) fn set_tag(&mut self, new: u32) {
        match self {
            Times::One(_, tag) | Times::Many(_, tag) => *tag = new,
        }
    }

    /// Whether more than one time is kept (a repeating source).
    pub(super) fn is_many(&self) -> bool {
        matches!(self, Times::Many(..))
    }

    /// Drops times at or before `horizon`, adds `weight` copies of `t`
    /// (keeping the newest `cap`), returns the count. The work is bounded by
    /// `cap`, never by `weight`: a count never exceeds `cap`, so a weight
    /// of `cap` or more fills the window at once.
    pub(super) fn add(&mut self, t: i64, horizon: i64, weight: u32, cap: usize) -> usize {
        let cap = cap.max(1);
        let add = usize::try_from(weight.max(1))
            .unwrap_or(usize::MAX)
            .min(cap);
        if let Times::Many(v, _) = self {
            // In place: no allocation once an address has a vector.
            v.retain(|&x| x > horizon);
            let over = (v.len() + add).saturating_sub(cap);
            v.drain(..over.min(v.len()));
            v.resize(v.len() + add, t);
            return v.len();
        }
        let Times::One(x, tag) = *self else { return 0 };
        let keep_old = x > horizon && add < cap;
        if !keep_old && add == 1 {
            *self = Times::One(t, tag);
            return 1;
        }
        let mut v = Vec::with_capacity(usize::from(keep_old) + add);
        if keep_old {
            v.push(x);
        }
        v.resize(v.len() + add, t);
        let len = v.len();
        *self = Times::Many(Box::new(v), tag);
        len
    }

    /// How many kept times lie less than `span` from `t`, either side (a
    /// late line dated before its neighbours still counts with them).
    pub(super) fn near(&self, t: i64, span: i64) -> usize {
        let close = |x: i64| x.abs_diff(t) < span.unsigned_abs();
        match self {
            Times::One(x, _) => usize::from(close(*x)),
            Times::Many(v, _) => v.iter().filter(|&&x| close(x)).count(),
        }
    }

    pub(super) fn last(&self) -> i64 {
        match self {
            Times::One(x, _) => *x,
            Times::Many(v, _) => v.last().copied().unwrap_or(i64::MIN),
        }
    }

    pub(super) fn shift(&mut self, delta: i64) {
        match self {
            Times::One(x, _) => *x += delta,
            Times::Many(v, _) => v.iter_mut().for_each(|x| *x += delta),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(t: &Times) -> Vec<i64> {
        match t {
            Times::One(x, _) => vec![*x],
            Times::Many(v, _) => v.to_vec(),
        }
    }

    /// Issue N4: `invite_weight = 4294967295` made one INVITE failure loop
    /// four billion times (29.6 s of a stalled daemon per failure). Each
    /// call below is answered at once; the thread is only there to fail
    /// this test, rather than hang it, if the work follows the weight.
    #[test]
    fn a_huge_weight_costs_no_more_than_the_cap() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut t = Times::one(5, 0);
            let a = t.add(10, 0, u32::MAX, 3);
            let b = t.add(11, 0, u32::MAX, 3);
            let mut u = Times::one(5, 0);
            let c = u.add(10, 0, u32::MAX, 1);
            let _ = tx.send((a, times(&t), b, c, times(&u)));
        });
        // Generous: the work is a few words; looped per weight it is minutes.
        let (a, t, b, c, u) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("Times::add still busy after 60 s: its work follows the weight");
        assert_eq!((a, b, c), (3, 3, 1));
        assert_eq!(t, [11, 11, 11]);
        assert_eq!(u, [10]);
    }

    /// The tag survives every change of form: the eviction queue finds the
    /// address by it.
    #[test]
    fn the_tag_stays_through_growth_and_reset() {
        let mut t = Times::one(5, 7);
        t.add(6, 0, 1, 5);
        assert!(t.is_many());
        assert_eq!(t.tag(), 7);
        t.set_tag(9);
        t.add(50, 40, 1, 5);
        assert_eq!((t.tag(), times(&t)), (9, vec![50]));
        let mut u = Times::one(5, 3);
        u.add(50, 40, 1, 5);
        assert_eq!((u.is_many(), u.tag(), times(&u)), (false, 3, vec![50]));
        assert_eq!(std::mem::size_of::<Times>(), 16);
    }

    #[test]
    fn the_newest_cap_times_are_kept() {
        // One old time inside the window, weight 2, cap 5.
        let mut t = Times::one(5, 0);
        assert_eq!(t.add(10, 0, 2, 5), 3);
        assert_eq!(times(&t), [5, 10, 10]);
        // Over the cap: the oldest go first.
        assert_eq!(t.add(12, 0, 3, 5), 5);
        assert_eq!(times(&t), [10, 10, 12, 12, 12]);
        // Times at or before the horizon leave first.
        assert_eq!(t.add(20, 10, 1, 5), 4);
        assert_eq!(times(&t), [12, 12, 12, 20]);
        // A weight of the cap or more fills the window.
        assert_eq!(t.add(21, 10, 9, 5), 5);
        assert_eq!(times(&t), [21; 5]);
        // Weight 0 counts as 1; an old single time is replaced.
        let mut t = Times::one(1, 0);
        assert_eq!(t.add(30, 1, 0, 5), 1);
        assert_eq!(times(&t), [30]);
        let mut t = Times::one(2, 0);
        assert_eq!(t.add(30, 1, 1, 5), 2);
        assert_eq!(times(&t), [2, 30]);
        // A weight of the cap from a single time: the old one is out.
        let mut t = Times::one(2, 0);
        assert_eq!(t.add(30, 1, 2, 2), 2);
        assert_eq!(times(&t), [30, 30]);
    }
}
