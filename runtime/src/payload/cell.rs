//! [`Cell`]: a small message kept, whatever its type, in a block of memory
//! taken from a pool the process shares, so that a message crossing
//! between threads costs no allocation of its own.
//!
//! A message's struct is usually small (a few strings, byte fields, lists
//! and numbers, whose contents are on the heap already), but it has to
//! live somewhere while its frame crosses: in a box of its own, which
//! costs a `malloc` on one thread and a `free` on another (the most
//! expensive kind for glibc, measured at about 200 instructions a message
//! on the thread driver's hot path), or in place in the frame, which makes
//! every frame, slot and call that holds one larger and each of their
//! moves a call to `memcpy` (measured: worse). A cell is the third way: a
//! block of `CELL_WORDS` words that a message of any type that fits is
//! written into, reached through one pointer, and given back to the pool
//! when the message is moved out or dropped, on whichever thread.
//!
//! A cell is a typed value in untyped storage, so this is the one place
//! of the runtime that handles a message through raw pointers. A table of
//! two functions per type (`Kind`) restores its type (as `dyn Value`) and
//! moves it into an `Arc`; everything else goes through the first.

use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::{Arc, Mutex};

use prost::Message;

use super::Value;

/// The room a cell has for a message, in 8-byte words: 128 bytes, which
/// holds a message of up to about five strings or lists.
const CELL_WORDS: usize = 16;

/// The most free blocks the pool keeps (about 136 KiB): the two messages
/// of each of 512 calls in flight find a block to use again; a block given
/// back to a full pool is freed (blocks in use are not counted).
const MAX_FREE: usize = 1024;

/// What a cell needs to know of the type it holds, one table per type.
struct Kind {
    /// The message as a `dyn Value`, given the address of its storage.
    view: fn(*mut u8) -> *mut dyn Value,
    /// Moves the message out of its storage into an `Arc`.
    share: unsafe fn(*mut u8) -> Arc<dyn Value>,
}

/// The table of type `M`.
struct KindOf<M>(std::marker::PhantomData<M>);

impl<M: Value> KindOf<M> {
    const KIND: &'static Kind = &Kind {
        view: view_as::<M>,
        share: share_as::<M>,
    };
}

/// The table of a free block: never used, a free block is reached only
/// through the pool.
const VACANT: &Kind = KindOf::<()>::KIND;

/// Restores a stored message's type.
fn view_as<M: Value>(storage: *mut u8) -> *mut dyn Value {
    storage.cast::<M>() as *mut dyn Value
}

/// Moves a stored `M` into an `Arc`.
///
/// # Safety
///
/// `storage` holds an `M`, which is neither used nor dropped there again.
#[allow(unsafe_code)]
unsafe fn share_as<M: Value>(storage: *mut u8) -> Arc<dyn Value> {
    // SAFETY: the caller's contract: an `M` is there, and read out once.
    Arc::new(unsafe { storage.cast::<M>().read() })
}

/// A block of memory a message is kept in.
struct Block {
    /// The type of the message stored: `KindOf::<M>::KIND`, or `VACANT`.
    kind: &'static Kind,
    /// The message. An `UnsafeCell`, as a message may change itself
    /// through a shared reference (an atomic it holds, say).
    storage: UnsafeCell<MaybeUninit<[u64; CELL_WORDS]>>,
}

/// The free blocks, bounded by `MAX_FREE`.
struct Pool {
    /// Boxes, not blocks: a cell holds its block by one pointer, and the
    /// message in it stays where it was written while it is in use.
    #[allow(clippy::vec_box)]
    free: Mutex<Vec<Box<Block>>>,
}

/// The process's pool, which every cell's block comes from and goes back
/// to.
static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Pool {
        Pool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// A free block: the pool's, or a new one.
    fn take(&self) -> Box<Block> {
        let free = crate::sync::lock(&self.free).pop();
        free.unwrap_or_else(|| {
            Box::new(Block {
                kind: VACANT,
                storage: UnsafeCell::new(MaybeUninit::uninit()),
            })
        })
    }

    /// Gives an empty block back, unless the pool is full.
    fn give_back(&self, mut block: Box<Block>) {
        block.kind = VACANT;
        let mut free = crate::sync::lock(&self.free);
        if free.len() < MAX_FREE {
            free.push(block);
        }
    }
}

/// A message of any type that fits in a block (and is aligned to at most
/// 8 bytes), kept in a block from the pool.
pub(super) struct Cell {
    block: ManuallyDrop<Box<Block>>,
}

// SAFETY: a cell holds only an `M: Message` (`Cell::new` takes nothing
// else), which is `Send + Sync`; the `UnsafeCell` is there for the
// message's own interior mutability, which its `Sync` covers.
#[allow(unsafe_code)]
unsafe impl Sync for Cell {}

impl Cell {
    /// Keeps `message` in a cell, or hands it back if it does not fit.
    pub(super) fn new<M: Message + Clone + 'static>(message: M) -> Result<Cell, M> {
        if !Cell::fits::<M>() {
            return Err(message);
        }
        let mut block = POOL.take();
        #[allow(unsafe_code)]
        // SAFETY: `fits` checked that an `M` fits in the storage and needs no
        // more alignment than it has (8 bytes); the block is free (new, or
        // given back after its message was moved out or dropped), so
        // nothing is overwritten.
        unsafe {
            block.storage.get().cast::<M>().write(message);
        }
        block.kind = KindOf::<M>::KIND;
        Ok(Cell {
            block: ManuallyDrop::new(block),
        })
    }

    /// Whether an `M` fits in a cell (decided at compile time).
    const fn fits<M>() -> bool {
        size_of::<M>() <= size_of::<[u64; CELL_WORDS]>() && align_of::<M>() <= align_of::<u64>()
    }

    /// The address of the message.
    fn storage(&self) -> *mut u8 {
        self.block.storage.get().cast()
    }

    /// The message.
    pub(super) fn get(&self) -> &dyn Value {
        #[allow(unsafe_code)]
        // SAFETY: `kind` is `KindOf::<M>::KIND` for the `M` that `new` wrote
        // into the storage, which holds it until `take`, `into_shared` or
        // `drop` ends the cell; the reference lives no longer than `self`,
        // and nothing else writes the storage meanwhile.
        unsafe {
            &*(self.block.kind.view)(self.storage())
        }
    }

    /// The message moved out, if it is an `M`; the cell otherwise.
    pub(super) fn take<M: 'static>(self) -> Result<M, Cell> {
        if !(self.get() as &dyn Any).is::<M>() {
            return Err(self);
        }
        let mut this = ManuallyDrop::new(self);
        #[allow(unsafe_code)]
        // SAFETY: the storage holds an `M` (checked just above), read out
        // once: the cell is not dropped (`this`), and its block is taken
        // from it exactly once and given back empty.
        unsafe {
            let message = this.storage().cast::<M>().read();
            POOL.give_back(ManuallyDrop::take(&mut this.block));
            Ok(message)
        }
    }

    /// The message moved out into a box of its own, shared by clones.
    pub(super) fn into_shared(self) -> Arc<dyn Value> {
        let mut this = ManuallyDrop::new(self);
        #[allow(unsafe_code)]
        // SAFETY: `share` is `share_as::<M>` for the `M` stored (see `get`);
        // it reads the message out once, and the cell is not dropped
        // (`this`), so it is neither used nor dropped in its storage again.
        // The block is taken from the cell exactly once and given back
        // empty.
        unsafe {
            let shared = (this.block.kind.share)(this.storage());
            POOL.give_back(ManuallyDrop::take(&mut this.block));
            shared
        }
    }
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Cell")
            .field(&self.get().type_name())
            .finish()
    }
}

impl Clone for Cell {
    fn clone(&self) -> Cell {
        self.get().clone_cell()
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        /// Gives the block back even if the message's `drop` panics.
        struct GiveBack(Option<Box<Block>>);
        impl Drop for GiveBack {
            fn drop(&mut self) {
                if let Some(block) = self.0.take() {
                    POOL.give_back(block);
                }
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: the block is taken from the cell once, here, and given
        // back by the guard whether or not the message's drop panics; its
        // storage holds the message `kind` names (see `get`), not moved out
        // (`take` and `into_shared` do not drop the cell), dropped once,
        // through a pointer made from the block where it now is.
        unsafe {
            let mut give_back = GiveBack(Some(ManuallyDrop::take(&mut self.block)));
            if let Some(block) = give_back.0.as_mut() {
                let value = (block.kind.view)(block.storage.get().cast());
                std::ptr::drop_in_place(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A message that counts its drops.
    #[derive(Clone, Debug, Default)]
    struct Counted {
        drops: Arc<AtomicUsize>,
        text: String,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    crate::payload::test_message!(Counted);

    #[test]
    fn a_message_is_dropped_once_whether_taken_dropped_or_cloned() {
        let drops = Arc::new(AtomicUsize::new(0));
        let message = || Counted {
            drops: Arc::clone(&drops),
            text: "kept".into(),
        };

        // Dropped in its cell.
        drop(Cell::new(message()).unwrap());
        assert_eq!(drops.load(Ordering::SeqCst), 1);

        // Moved out: dropped by its new owner, not by the cell.
        let taken: Counted = Cell::new(message()).unwrap().take().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(taken.text, "kept");
        drop(taken);
        assert_eq!(drops.load(Ordering::SeqCst), 2);

        // Taken as another type: the cell comes back whole.
        let cell = Cell::new(message()).unwrap();
        let cell = cell.take::<String>().unwrap_err();
        assert_eq!(drops.load(Ordering::SeqCst), 2);

        // A clone is a message of its own.
        let copy = cell.clone();
        drop(cell);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        let taken: Counted = copy.take().unwrap();
        assert_eq!(taken.text, "kept");
        drop(taken);
        assert_eq!(drops.load(Ordering::SeqCst), 4);

        // Moved into a box: dropped once, with the box.
        let shared = Cell::new(message()).unwrap().into_shared();
        assert_eq!(drops.load(Ordering::SeqCst), 4);
        assert_eq!(shared.type_name(), std::any::type_name::<Counted>());
        drop(shared);
        assert_eq!(drops.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn a_block_given_back_is_used_again_and_the_pool_keeps_no_more_than_its_bound() {
        let pool = Pool::new();
        let block = pool.take();
        let at: *const Block = &*block;
        pool.give_back(block);
        assert!(
            std::ptr::eq(&*pool.take(), at),
            "a freed block was not used again"
        );

        let blocks: Vec<Box<Block>> = (0..MAX_FREE + 100).map(|_| pool.take()).collect();
        blocks.into_iter().for_each(|block| pool.give_back(block));
        assert_eq!(crate::sync::lock(&pool.free).len(), MAX_FREE);
    }

    #[test]
    fn only_messages_that_fit_are_kept_in_cells() {
        assert!(Cell::fits::<[u64; 16]>());
        assert!(!Cell::fits::<[u64; 17]>());
        assert!(!Cell::fits::<u128>(), "aligned to more than a word");
        assert!(Cell::new(String::from("small")).is_ok());
    }

    #[test]
    fn cells_are_made_on_one_thread_and_taken_on_another() {
        let cells: Vec<Cell> = (0..MAX_FREE + 100)
            .map(|i| Cell::new(i.to_string()).unwrap())
            .collect();
        let taken = std::thread::spawn(move || {
            cells
                .into_iter()
                .map(|cell| cell.take::<String>().unwrap())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        assert_eq!(taken[MAX_FREE + 99], (MAX_FREE + 99).to_string());
    }

    /// A message that changes itself through `&self`, as one that caches its
    /// encoded length in an atomic would.
    #[derive(Debug, Default)]
    struct Caching {
        encodings: AtomicUsize,
    }

    impl Clone for Caching {
        fn clone(&self) -> Caching {
            Caching::default()
        }
    }

    crate::payload::test_message!(Caching, |message| {
        message.encodings.fetch_add(1, Ordering::SeqCst);
    });

    #[test]
    fn a_message_may_change_itself_through_a_shared_reference_in_its_cell() {
        let cell = Cell::new(Caching::default()).unwrap();
        cell.get().to_bytes();
        cell.get().to_bytes();
        let taken: Caching = cell.take().unwrap();
        assert_eq!(taken.encodings.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_message_without_fields_of_its_own_fits_and_comes_back() {
        let cell = Cell::new(()).unwrap();
        assert_eq!(cell.get().type_name(), "()");
        let () = cell.take().unwrap();
    }

    /// A message whose `drop` panics.
    #[derive(Clone, Debug, Default)]
    struct Exploding(u64);

    impl Drop for Exploding {
        fn drop(&mut self) {
            if self.0 == 1 {
                panic!("the message's drop panicked");
            }
        }
    }

    crate::payload::test_message!(Exploding);

    #[test]
    fn a_block_is_not_lost_when_its_messages_drop_panics() {
        // Under Miri a lost block fails the run as a leak; here, the panic
        // passes through the cell's drop as any drop's would.
        let cell = Cell::new(Exploding(1)).unwrap();
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(cell)));
        assert!(dropped.is_err(), "the message's panic reached the caller");
        let cell = Cell::new(Exploding(2)).unwrap();
        drop(cell);
    }
}
