//! A small pool of model instances (ONNX sessions need `&mut` to run). A caller takes the first
//! free instance, or waits on one chosen round-robin when all are busy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub(crate) struct Pool<T> {
    items: Vec<Mutex<T>>,
    next: AtomicUsize,
}

impl<T> Pool<T> {
    pub(crate) fn new(items: Vec<T>) -> Self {
        assert!(!items.is_empty(), "a pool needs at least one instance");
        Pool {
            items: items.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        for m in &self.items {
            if let Ok(mut g) = m.try_lock() {
                return f(&mut g);
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.items.len();
        let mut g = self.items[i].lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}
