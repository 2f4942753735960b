use super::*;

#[test]
fn tags_and_ids_are_domain_separated() {
    let p = IdentityKeyPair::generate(&mut rand::rng());
    let id = group_id(&p.user_id(), &[1; 16]);
    assert_ne!(id, group_id(&p.user_id(), &[2; 16]));
    assert_ne!(group_tag(&id).0, id.0);
    assert_eq!(group_tag(&id), group_tag(&id));
}
