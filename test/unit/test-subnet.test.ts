import { pickTestSubnet } from '../../dev/hypervisor-hosts';

describe('the two-hypervisor fixture picks its link-local test subnet', () => {
  it('never picks 169.254.169.0/24 (cloud metadata), whatever the random draw', () => {
    for (let i = 0; i < 1000; i++) expect(pickTestSubnet('', () => i / 1000)).not.toBe(169);
  });

  it('picks a subnet in 169.254.100-249 that no interface uses', () => {
    const used = Array.from({ length: 149 }, (_, i) => 100 + i)
      .map((n) => `4: br0    inet 169.254.${n}.1/24 scope global br0`)
      .join('\n');
    expect(pickTestSubnet(used, () => 0.5)).toBe(249);
  });

  it('says so when every subnet is taken', () => {
    const used = Array.from({ length: 150 }, (_, i) => ` 169.254.${100 + i}.1/24`).join('\n');
    expect(() => pickTestSubnet(used)).toThrow('no free 169.254.N.0/24 subnet');
  });
});
