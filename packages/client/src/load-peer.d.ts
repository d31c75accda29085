/** Loads an optional peer (a vendor SDK) synchronously, from where this package is installed. */
export declare function loadPeer(name: string): unknown;
