//! A small aggregate for the store and runtime tests: a pot that is planted, watered, pruned.

use nursery::domain::Aggregate;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planted {
    pub species: String,
}

/// Revision 2: revision 1 stored `ml` (a number); revision 2 names it `millilitres` and adds
/// `source`. The upcaster in [`upcasters`] lifts one to the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Watered {
    pub millilitres: u32,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    pub leaves: u32,
}

nursery::event_set! {
    /// What happens to a pot.
    pub enum PotEvent { Planted, Watered @ 2, Pruned }
}

pub fn upcasters() -> nursery::store::Upcasters {
    nursery::store::Upcasters::new().register("Watered", 1, |mut value| {
        let object = value.as_object_mut().ok_or("Watered v1 is not a map")?;
        let ml = object.remove("ml").ok_or("Watered v1 has no ml")?;
        object.insert("millilitres".into(), ml);
        object.insert("source".into(), "tap".into());
        Ok(value)
    })
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pot {
    pub species: Option<String>,
    pub water: u64,
    pub leaves_pruned: u64,
    pub events: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PotError {
    #[error("the pot is already planted")]
    AlreadyPlanted,
    #[error("nothing is planted")]
    Empty,
}

#[derive(Clone, Debug)]
pub enum PotCommand {
    Plant {
        species: String,
    },
    Water {
        millilitres: u32,
    },
    Prune {
        leaves: u32,
    },
    /// Panics in `decide`: for supervision tests.
    Explode,
}

impl nursery::domain::Command for PotCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Plant { .. } => "Plant",
            Self::Water { .. } => "Water",
            Self::Prune { .. } => "Prune",
            Self::Explode => "Explode",
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Water { millilitres: 0 } => Err("millilitres must be at least 1".into()),
            _ => Ok(()),
        }
    }
}

impl Aggregate for Pot {
    const TYPE: &'static str = "Pot";
    type Command = PotCommand;
    type Event = PotEvent;
    type Error = PotError;

    fn decide(&self, command: &PotCommand) -> Result<Vec<PotEvent>, PotError> {
        match command {
            PotCommand::Plant { species } if self.species.is_none() => Ok(vec![
                Planted {
                    species: species.clone(),
                }
                .into(),
            ]),
            PotCommand::Plant { .. } => Err(PotError::AlreadyPlanted),
            #[allow(
                clippy::panic,
                reason = "the supervision tests need a decide that panics"
            )]
            PotCommand::Explode => panic!("the pot exploded"),
            _ if self.species.is_none() => Err(PotError::Empty),
            PotCommand::Water { millilitres } => Ok(vec![
                Watered {
                    millilitres: *millilitres,
                    source: "can".into(),
                }
                .into(),
            ]),
            PotCommand::Prune { leaves } => Ok(vec![Pruned { leaves: *leaves }.into()]),
        }
    }

    fn apply(&mut self, event: &PotEvent) {
        self.events += 1;
        match event {
            PotEvent::Planted(e) => self.species = Some(e.species.clone()),
            PotEvent::Watered(e) => self.water += u64::from(e.millilitres),
            #[allow(
                clippy::panic,
                reason = "the supervision tests need an apply that panics"
            )]
            PotEvent::Pruned(e) if e.leaves == 666 => panic!("a cursed prune"),
            PotEvent::Pruned(e) => self.leaves_pruned += u64::from(e.leaves),
        }
    }
}

#[test]
fn a_pot_must_be_planted_before_it_is_watered_or_pruned() {
    let empty = Pot::default();
    assert_eq!(
        empty.decide(&PotCommand::Water { millilitres: 1 }),
        Err(PotError::Empty)
    );
    assert_eq!(
        empty.decide(&PotCommand::Prune { leaves: 1 }),
        Err(PotError::Empty)
    );
    let mut pot = Pot::default();
    pot.apply_all(
        &empty
            .decide(&PotCommand::Plant {
                species: "fern".into(),
            })
            .unwrap(),
    );
    assert_eq!(
        pot.decide(&PotCommand::Plant {
            species: "ivy".into()
        }),
        Err(PotError::AlreadyPlanted)
    );
    pot.apply_all(&pot.decide(&PotCommand::Water { millilitres: 5 }).unwrap());
    pot.apply_all(
        &pot.clone()
            .decide(&PotCommand::Prune { leaves: 2 })
            .unwrap(),
    );
    assert_eq!((pot.water, pot.leaves_pruned, pot.events), (5, 2, 3));
}
