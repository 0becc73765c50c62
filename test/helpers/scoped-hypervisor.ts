// Moved to dev/ so that the benches (built without test/) can scope their host workers the same way.
export { scopedHypervisor } from '../../dev/scoped-hypervisor';
