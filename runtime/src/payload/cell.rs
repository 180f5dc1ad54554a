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
//! of the runtime that handles a message through raw pointers. `view`
//! restores its type (as `dyn Value`); everything else goes through that.

use std::any::Any;
use std::fmt;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::{Arc, Mutex};

use prost::Message;

use super::Value;

/// The room a cell has for a message, in words: 128 bytes, which holds a
/// message of up to about five strings or lists.
const CELL_WORDS: usize = 16;

/// The most free blocks the pool keeps (about 136 KiB): more than enough
/// for the messages of thousands of calls in flight; a block given back
/// to a full pool is freed.
const MAX_FREE: usize = 1024;

/// A block of memory a message is kept in.
struct Block {
    /// The stored message as a `dyn Value`, given the address of
    /// `storage`: `view_as::<M>` for the `M` stored, `vacant` for none.
    view: fn(*const u8) -> *const dyn Value,
    storage: MaybeUninit<[usize; CELL_WORDS]>,
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
                view: vacant,
                storage: MaybeUninit::uninit(),
            })
        })
    }

    /// Gives an empty block back, unless the pool is full.
    fn give_back(&self, mut block: Box<Block>) {
        block.view = vacant;
        let mut free = crate::sync::lock(&self.free);
        if free.len() < MAX_FREE {
            free.push(block);
        }
    }
}

/// Restores a stored message's type.
fn view_as<M: Value>(storage: *const u8) -> *const dyn Value {
    storage.cast::<M>() as *const dyn Value
}

/// The `view` of a free block, never called: a free block is reached only
/// through the pool.
fn vacant(_: *const u8) -> *const dyn Value {
    std::ptr::null::<()>() as *const dyn Value
}

/// A message of any type that fits in a block (and is aligned to at most
/// a word), kept in a block from the pool.
pub(super) struct Cell {
    block: ManuallyDrop<Box<Block>>,
}

// A `Cell` is `Send` and `Sync` as its fields are: it holds only an
// `M: Message`, which is both (`Cell::new` takes nothing else).

impl Cell {
    /// Keeps `message` in a cell, or hands it back if it does not fit.
    pub(super) fn new<M: Message + Clone + 'static>(message: M) -> Result<Cell, M> {
        if !Cell::fits::<M>() {
            return Err(message);
        }
        let mut block = POOL.take();
        #[allow(unsafe_code)]
        // SAFETY: `fits` checked that an `M` fits in the storage and needs no
        // more alignment than it has (a word's); the block is free (new, or
        // given back after its message was moved out or dropped), so
        // nothing is overwritten.
        unsafe {
            block.storage.as_mut_ptr().cast::<M>().write(message);
        }
        block.view = view_as::<M>;
        Ok(Cell {
            block: ManuallyDrop::new(block),
        })
    }

    /// Whether an `M` fits in a cell (decided at compile time).
    const fn fits<M>() -> bool {
        size_of::<M>() <= size_of::<[usize; CELL_WORDS]>() && align_of::<M>() <= align_of::<usize>()
    }

    /// The message.
    pub(super) fn get(&self) -> &dyn Value {
        #[allow(unsafe_code)]
        // SAFETY: `view` is `view_as::<M>` for the `M` that `new` wrote into
        // the storage, which holds it until `take` moves it out or `drop`
        // drops it, both of which end the cell; the reference lives no
        // longer than `self`.
        unsafe {
            &*(self.block.view)(self.block.storage.as_ptr().cast())
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
            let message = this.block.storage.as_ptr().cast::<M>().read();
            POOL.give_back(ManuallyDrop::take(&mut this.block));
            Ok(message)
        }
    }
}

impl Cell {
    /// The message moved out into a box of its own, shared by clones.
    pub(super) fn into_shared(self) -> Arc<dyn Value> {
        let mut this = ManuallyDrop::new(self);
        #[allow(unsafe_code)]
        // SAFETY: the message is moved out once and the cell not dropped
        // (`this`), so it is neither used nor dropped in its storage again;
        // the block is taken from the cell exactly once and given back
        // empty.
        unsafe {
            let shared = this.get().move_to_shared();
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
        // From the storage's `&mut`: dropping writes.
        let value = (self.block.view)(self.block.storage.as_mut_ptr().cast()).cast_mut();
        #[allow(unsafe_code)]
        // SAFETY: the storage holds the message `view` names (see `get`),
        // not moved out (`take` does not drop the cell), and it is dropped
        // once; the block is taken from the cell once, here, and given back
        // empty.
        unsafe {
            std::ptr::drop_in_place(value);
            POOL.give_back(ManuallyDrop::take(&mut self.block));
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

    impl Message for Counted {
        fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
            self.text.encode_raw(buf);
        }
        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: prost::encoding::WireType,
            buf: &mut impl bytes::Buf,
            ctx: prost::encoding::DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            self.text.merge_field(tag, wire_type, buf, ctx)
        }
        fn encoded_len(&self) -> usize {
            self.text.encoded_len()
        }
        fn clear(&mut self) {
            self.text.clear();
        }
    }

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
        assert!(crate::sync::lock(&POOL.free).len() <= MAX_FREE);
    }
}
