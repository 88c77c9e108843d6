//! Counts every trajectory write from outside the processes: the writer
//! renames a finished temp file onto `<task_id>.json`, which the kernel
//! reports as one `IN_MOVED_TO` event (inotify). So "written twice" is
//! measured, not inferred from logs that a killed process may not have
//! flushed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchMask};

#[derive(Debug, Default, Clone)]
pub struct Writes {
    /// `IN_MOVED_TO` events per task id (file name less `.json`).
    pub per_task: BTreeMap<String, u32>,
    /// Writer temp files created.
    pub temp_created: u64,
    /// The kernel's event queue overflowed: counts are a lower bound.
    pub overflowed: bool,
}

impl Writes {
    /// Task ids written more than once.
    pub fn rewritten(&self) -> Vec<(String, u32)> {
        self.per_task
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.per_task.values().map(|n| u64::from(*n)).sum()
    }
}

/// Watches one trajectories directory until dropped.
pub struct WriteWatch {
    writes: Arc<Mutex<Writes>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WriteWatch {
    /// Starts watching `dir` (created if missing).
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create trajectories dir");
        let mut inotify = Inotify::init().expect("inotify_init");
        inotify
            .watches()
            .add(dir, WatchMask::MOVED_TO | WatchMask::CREATE)
            .expect("inotify watch");
        let writes = Arc::new(Mutex::new(Writes::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (writes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let stopping = s.load(Ordering::SeqCst);
                match inotify.read_events(&mut buf) {
                    Ok(events) => {
                        let mut w = w.lock().expect("writes lock");
                        for e in events {
                            if e.mask.contains(EventMask::Q_OVERFLOW) {
                                w.overflowed = true;
                            }
                            let Some(name) = e.name.and_then(|n| n.to_str()) else {
                                continue;
                            };
                            if e.mask.contains(EventMask::MOVED_TO) {
                                if let Some(id) = name.strip_suffix(".json") {
                                    *w.per_task.entry(id.to_owned()).or_default() += 1;
                                }
                            } else if e.mask.contains(EventMask::CREATE)
                                && adp_core::writer::is_temp_file_name(name)
                            {
                                w.temp_created += 1;
                            }
                        }
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("inotify read: {e}"),
                }
                if stopping {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        WriteWatch {
            writes,
            stop,
            thread: Some(thread),
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Writes {
        // Let the reader drain what the kernel has queued.
        std::thread::sleep(Duration::from_millis(60));
        self.writes.lock().expect("writes lock").clone()
    }
}

impl Drop for WriteWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
