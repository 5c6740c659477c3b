//! Sources turn the outside world into [`FailureEvent`](crate::event::FailureEvent)s.
//! They know nothing about banning.

pub mod esl;
pub mod file;
pub mod scanner;
pub mod wire;
