//! The checks `[defaults]` and `[jail.NAME]` share for their counting keys:
//! the escalation keys (read per table, then resolved against `[defaults]`),
//! durations of at least a second, ban lengths and `maxretry`. Apart from
//! `config.rs` so that file stays the tables and how a jail is resolved.

use toml::Spanned;

use super::{Bad, JailConfigError, NO_BAN};
use crate::duration::{BanTime, Duration};
use crate::jail::Escalation;

/// The escalation keys of one table, before inheritance.
#[derive(Default)]
pub(super) struct EscKeys {
    inc: Option<bool>,
    factor: Option<f64>,
    mults: Option<Vec<u32>>,
    maxtime: Option<Duration>,
    overall: Option<bool>,
    pub(super) rndtime: Option<Duration>,
}

impl EscKeys {
    pub(super) fn check(
        inc: Option<bool>,
        factor: &Option<Spanned<f64>>,
        mults: &Option<Spanned<Vec<u32>>>,
        maxtime: &Option<Spanned<Duration>>,
        overall: Option<bool>,
        rndtime: Option<Duration>,
    ) -> Result<EscKeys, Bad> {
        let maxtime = positive(maxtime, "bantime_maxtime", NO_BAN)?;
        if let Some(f) = factor {
            let v = *f.get_ref();
            if !(v.is_finite() && v > 0.0) {
                return Err(Spanned::new(f.span(), JailConfigError::Factor));
            }
        }
        if let Some(m) = mults {
            if m.get_ref().is_empty() || m.get_ref().contains(&0) {
                return Err(Spanned::new(m.span(), JailConfigError::Multipliers));
            }
        }
        Ok(EscKeys {
            inc,
            factor: factor.as_ref().map(|f| *f.get_ref()),
            mults: mults.as_ref().map(|m| m.get_ref().clone()),
            maxtime,
            overall,
            rndtime,
        })
    }

    /// The escalation of a jail with these keys under `[defaults]`' `d`.
    pub(super) fn over(self, d: &EscKeys) -> Option<Escalation> {
        self.inc.or(d.inc).unwrap_or(false).then(|| Escalation {
            factor: self.factor.or(d.factor).unwrap_or(1.0),
            multipliers: self.mults.or_else(|| d.mults.clone()).unwrap_or_default(),
            maxtime: self.maxtime.or(d.maxtime),
            overall_jails: self.overall.or(d.overall).unwrap_or(false),
            rndtime: self.rndtime.or(d.rndtime).filter(|r| r.0 > 0),
        })
    }
}

/// A duration that must be at least a second: `findtime`, `bantime_maxtime`.
pub(super) fn positive(
    d: &Option<Spanned<Duration>>,
    key: &'static str,
    why: &'static str,
) -> Result<Option<Duration>, Bad> {
    match d {
        Some(v) if v.get_ref().0 == 0 => Err(Spanned::new(
            v.span(),
            JailConfigError::ZeroDuration { key, why },
        )),
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    }
}

/// A ban length: at least a second, or `-1`.
pub(super) fn ban_length(b: &Option<Spanned<BanTime>>) -> Result<Option<BanTime>, Bad> {
    match b {
        Some(v) if *v.get_ref() == BanTime::For(Duration(0)) => {
            Err(Spanned::new(v.span(), JailConfigError::ZeroBan))
        }
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    }
}

/// `ipv6_prefix`: 32 to 128.
pub(super) fn ipv6_prefix(p: &Option<Spanned<i64>>) -> Result<Option<u8>, Bad> {
    use crate::jail::prefix::MIN_IPV6_PREFIX;
    match p {
        Some(p) => u8::try_from(*p.get_ref())
            .ok()
            .filter(|n| (MIN_IPV6_PREFIX..=128).contains(n))
            .map(Some)
            .ok_or_else(|| Spanned::new(p.span(), JailConfigError::Ipv6Prefix(*p.get_ref()))),
        None => Ok(None),
    }
}

/// `maxretry`: at least 1.
pub(super) fn maxretry(m: &Option<Spanned<u32>>) -> Result<Option<u32>, Bad> {
    match m {
        Some(m) if *m.get_ref() == 0 => Err(Spanned::new(m.span(), JailConfigError::Maxretry)),
        Some(m) => Ok(Some(*m.get_ref())),
        None => Ok(None),
    }
}
