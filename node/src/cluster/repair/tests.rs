use super::*;

fn plan(voters: &[u64], learners: &[u64]) -> GroupPlan {
    GroupPlan { ranges: vec![], voters: voters.to_vec(), learners: learners.to_vec(), generation: 1 }
}

fn raft(voters: &[u64], learners: &[u64]) -> RaftView {
    RaftView { voters: voters.to_vec(), learners: learners.to_vec(), pending: None, in_flight: false }
}

#[test]
fn agreement_needs_nothing() {
    assert_eq!(plan_repair(&plan(&[1, 2, 3], &[]), &raft(&[3, 1, 2], &[]), 3), None);
}

#[test]
fn a_joint_configuration_is_finished_first() {
    let view = RaftView { pending: Some(vec![1, 2, 4]), ..raft(&[1, 2, 3, 4], &[]) };
    assert_eq!(plan_repair(&plan(&[1, 2, 3], &[4]), &view, 3), Some(Repair::FinishJoint { voters: vec![1, 2, 4] }));
}

#[test]
fn a_move_cut_before_promotion_is_rolled_back() {
    // The soak's case: the map lists 5 as learner; Raft never added it.
    let p = plan(&[3, 4, 5], &[1]);
    assert_eq!(plan_repair(&p, &raft(&[3, 4, 5], &[]), 3), Some(Repair::Drop { learner: 1, in_raft: false }));
    assert_eq!(plan_repair(&p, &raft(&[3, 4, 5], &[1]), 3), Some(Repair::Drop { learner: 1, in_raft: true }));
}

#[test]
fn a_move_cut_after_the_raft_swap_is_finished_in_the_map() {
    // Raft swapped 3 for 6; the map was not updated.
    let p = plan(&[2, 3, 4], &[6]);
    assert_eq!(
        plan_repair(&p, &raft(&[2, 4, 6], &[]), 3),
        Some(Repair::FollowRaft { voters: vec![2, 4, 6], learners: vec![] })
    );
}

#[test]
fn a_rejoin_cut_short_keeps_the_node_and_promotes_it() {
    // Raft dropped wiped node 2; the map still lists it as voter.
    let p = plan(&[2, 3, 4], &[]);
    assert_eq!(
        plan_repair(&p, &raft(&[3, 4], &[]), 3),
        Some(Repair::FollowRaft { voters: vec![3, 4], learners: vec![2] })
    );
    // Next pass: the map lists it as learner in a group of two.
    assert_eq!(plan_repair(&plan(&[3, 4], &[2]), &raft(&[3, 4], &[2]), 3), Some(Repair::Promote { learner: 2 }));
}

#[test]
fn nothing_is_repaired_while_a_change_is_uncommitted() {
    let view = RaftView { in_flight: true, ..raft(&[2, 4, 6], &[]) };
    assert_eq!(plan_repair(&plan(&[2, 3, 4], &[6]), &view, 3), None);
}

#[test]
fn a_stray_raft_learner_is_removed() {
    assert_eq!(
        plan_repair(&plan(&[1, 2, 3], &[]), &raft(&[1, 2, 3], &[9]), 3),
        Some(Repair::RemoveStray { learner: 9 })
    );
}

#[test]
fn small_clusters_do_not_promote_past_their_size() {
    // One live node short of three: two voters are the whole group.
    assert_eq!(
        plan_repair(&plan(&[1, 2], &[3]), &raft(&[1, 2], &[]), 2),
        Some(Repair::Drop { learner: 3, in_raft: false })
    );
}
