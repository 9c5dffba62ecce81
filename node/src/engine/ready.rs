//! [`Ready`]: a value made in the background (a model loading, a script
//! compiling) that callers wait for.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::error::Error;

enum State<T> {
    Pending,
    Ready(T),
    Failed(Error),
}

/// A value that is being made, then is there (or failed to be made).
pub struct Ready<T> {
    state: Mutex<State<T>>,
    done: Condvar,
    started: AtomicBool,
}

impl<T: Clone> Default for Ready<T> {
    fn default() -> Self {
        Ready { state: Mutex::new(State::Pending), done: Condvar::new(), started: AtomicBool::new(false) }
    }
}

impl<T: Clone> Ready<T> {
    /// Whether this is the first call: the caller then makes the value.
    pub fn start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// The value is made (or failed): wakes whoever waits.
    pub fn set(&self, result: Result<T, Error>) {
        self.started.store(true, Ordering::Release);
        *self.state.lock() = match result {
            Ok(v) => State::Ready(v),
            Err(e) => State::Failed(e),
        };
        self.done.notify_all();
    }

    /// The value if it is made.
    pub fn get(&self) -> Option<T> {
        match &*self.state.lock() {
            State::Ready(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The value, waiting while it is being made (blocking).
    pub fn wait(&self) -> Result<T, Error> {
        let mut s = self.state.lock();
        loop {
            match &*s {
                State::Ready(v) => return Ok(v.clone()),
                State::Failed(e) => return Err(e.clone()),
                State::Pending => self.done.wait(&mut s),
            }
        }
    }
}
