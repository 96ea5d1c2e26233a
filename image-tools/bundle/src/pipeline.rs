//! An ordered, bounded, parallel map: one thread produces items, `threads`
//! workers transform them, and the caller's thread consumes the results in
//! the order they were produced.
//!
//! The bundle reader (decompress + hash) and writer (compress + hash) both
//! run on it, so that reading, the CPU work and writing overlap and every
//! core works. At most about `3 × threads` items are in flight, which bounds
//! memory to a few chunks whatever the image size.

use crossbeam_channel::bounded;
use std::collections::BTreeMap;

/// Runs `produce` on its own thread until it returns `Ok(None)`, `work` on
/// `threads` workers (each with its own state from `make_state`), and
/// `consume` on the calling thread in production order. The first error
/// from any of them stops the rest and is returned.
pub fn ordered_map<I, O, S, E>(
    threads: usize,
    produce: impl FnMut() -> Result<Option<I>, E> + Send,
    make_state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, I) -> Result<O, E> + Sync,
    consume: impl FnMut(O) -> Result<(), E>,
) -> Result<(), E>
where
    I: Send,
    O: Send,
    E: Send,
{
    ordered_map_until(threads, produce, make_state, work, consume, || ())
}

/// [`ordered_map`], calling `stopped` once the consumer is done, by an
/// error, a panic or the end, before the producer is waited for: a producer
/// that waits for something only consumed items give back (buffers of a
/// [`crate::budget::BufferPool`]) must be woken then, or the wait for it
/// never ends.
pub fn ordered_map_until<I, O, S, E>(
    threads: usize,
    mut produce: impl FnMut() -> Result<Option<I>, E> + Send,
    make_state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, I) -> Result<O, E> + Sync,
    mut consume: impl FnMut(O) -> Result<(), E>,
    stopped: impl Fn() + Sync,
) -> Result<(), E>
where
    I: Send,
    O: Send,
    E: Send,
{
    struct OnDrop<F: Fn()>(F);
    impl<F: Fn()> Drop for OnDrop<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let threads = threads.max(1);
    let (job_tx, job_rx) = bounded::<(u64, I)>(threads);
    let (out_tx, out_rx) = bounded::<(u64, Result<O, E>)>(threads);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<u64, E> {
            let mut seq = 0u64;
            while let Some(item) = produce()? {
                if job_tx.send((seq, item)).is_err() {
                    break; // the consumer stopped; its error is the one reported
                }
                seq += 1;
            }
            Ok(seq)
        });
        for _ in 0..threads {
            let (job_rx, out_tx) = (job_rx.clone(), out_tx.clone());
            let (make_state, work, stopped) = (&make_state, &work, &stopped);
            scope.spawn(move || {
                // A worker that panics never sends its item, and the
                // consumer would wait for it while the producer waits for
                // what the items behind it hold: stop them both.
                let _on_panic = OnDrop(|| {
                    if std::thread::panicking() {
                        stopped()
                    }
                });
                let mut state = make_state();
                for (seq, item) in job_rx {
                    if out_tx.send((seq, work(&mut state, item))).is_err() {
                        return;
                    }
                }
            });
        }
        drop((job_rx, out_tx));

        let stop_guard = OnDrop(&stopped);
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let consumed: Result<(), E> = (|| {
            for (seq, result) in &out_rx {
                pending.insert(seq, result);
                while let Some(result) = pending.remove(&next) {
                    consume(result?)?;
                    next += 1;
                }
            }
            Ok(())
        })();
        // Dropping the receiver makes workers, then the producer, stop;
        // what they hold is freed with the results not consumed.
        drop(out_rx);
        drop(pending);
        drop(stop_guard);
        let produced = producer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        consumed?;
        let produced = produced?;
        debug_assert_eq!(produced, next, "every produced item is consumed");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keeps_order_under_uneven_work() {
        let mut n = 0u32;
        let mut seen = Vec::new();
        ordered_map(
            4,
            || -> Result<Option<u32>, String> {
                n += 1;
                Ok((n <= 200).then_some(n))
            },
            || (),
            |_, x| {
                std::thread::sleep(Duration::from_micros(u64::from(x % 7) * 100));
                Ok(x * 2)
            },
            |x| {
                seen.push(x);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (1..=200).map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn errors_from_each_stage_stop_the_run() {
        let run = |fail_at: &str| {
            let mut n = 0u32;
            let mut consumed = 0u32;
            let result = ordered_map(
                2,
                || {
                    n += 1;
                    if fail_at == "produce" && n == 50 {
                        return Err("produce failed".to_string());
                    }
                    Ok(Some(n))
                },
                || (),
                |_, x| {
                    if fail_at == "work" && x == 30 {
                        Err("work failed".into())
                    } else {
                        Ok(x)
                    }
                },
                |x| {
                    consumed += 1;
                    if fail_at == "consume" && x == 10 {
                        return Err("consume failed".into());
                    }
                    Ok(())
                },
            );
            (result, consumed)
        };
        assert_eq!(run("produce"), (Err("produce failed".into()), 49));
        assert_eq!(run("work"), (Err("work failed".into()), 29));
        assert_eq!(run("consume"), (Err("consume failed".into()), 10));
    }
}
